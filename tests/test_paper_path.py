"""The paper-scale path on tiny stand-ins: a random 2-layer ViT saved as a local Hugging Face checkpoint, synthetic
ImageFolder / CIFAR-pickle / CUB / DomainNet trees, the committed split files, augmentation."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from perturbmerge.cli import main
from perturbmerge.data import get_benchmark
from perturbmerge.data.augment import random_resized_crop_flip
from perturbmerge.data.paper import NOTES, SPLITS, make_split_file, read_cifar_pickle, seeded_train_split
from perturbmerge.errors import UserError

from helpers import request


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32, num_labels=5)
    path = tmp_path_factory.mktemp("vit") / "tiny-vit"
    ViTForImageClassification(config).save_pretrained(path)  # a classification checkpoint: the head is dropped
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3], "size": {"height": 32, "width": 32}}))
    return path


def _png(path: Path, seed: int, size: int = 12) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 255, (size, size, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def _pm_lora_on_an_image_folder(tmp_path: Path, backbone: str) -> dict:
    """pm-lora, 2 tasks, on a synthetic 4-class image folder with the given backbone; the results."""
    for c in range(4):
        for i in range(4):
            _png(tmp_path / "imgs" / f"class{c}" / f"{i}.png", 10 * c + i)
    out = tmp_path / "run"
    assert main(["run", "--benchmark", f"folder:{tmp_path / 'imgs'}", "--method", "pm-lora", "--tasks", "2", "--out",
                 str(out), "--quiet", "--set", f"backbone={backbone}", "epochs=1", "batch_size=4"]) == 0
    return json.loads((out / "results.json").read_text())


def test_hf_vit_backbone_is_an_image_backbone_with_key_value_targets(tiny_vit):
    from perturbmerge.adaptation import resolve_lora_targets
    from perturbmerge.backbones import get_backbone_spec

    spec = get_backbone_spec(f"hf:{tiny_vit}")
    assert spec.modality == "image" and spec.image_size == 32
    backbone = spec.build(0)
    assert backbone.lora_targets == ["k_proj", "v_proj"] and backbone.feature_dim == 16  # transformers 5 names
    assert resolve_lora_targets(backbone.module, ["k_proj", "v_proj"]) == ["k_proj", "v_proj"]
    with pytest.raises(UserError, match=r"match no Linear/Conv module of the backbone; available: .*attention\.q_proj"):
        resolve_lora_targets(backbone.module, ["qkv"])
    # preprocessing: resize to 32, normalise with the checkpoint's mean/std, CLS token of the last hidden state
    images = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8)
    with torch.no_grad():
        features = backbone.module.eval()(images)
        x = torch.nn.functional.interpolate(images.float() / 255, size=(32, 32), mode="bilinear",
                                            align_corners=False, antialias=True)
        mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
        expected = backbone.module.model(pixel_values=(x - mean) / std).last_hidden_state[:, 0]
    torch.testing.assert_close(features, expected)


def test_pm_lora_end_to_end_on_an_image_folder_with_a_local_vit(tiny_vit, tmp_path):
    results = _pm_lora_on_an_image_folder(tmp_path, f"hf:{tiny_vit}")
    assert results["alphas"][0] == pytest.approx(1.0) and 0.0 <= results["alphas"][1] <= 1.0
    assert "ViT (2 layers, patch 4, 32x32)" in results["backbone"]


def _cifar_tree(root: Path, per_class_train: int = 2) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for split, count in (("train", per_class_train), ("test", 1)):
        labels = [c for c in range(100) for _ in range(count)]
        data = {b"data": rng.randint(0, 255, (len(labels), 3072)).astype(np.uint8), b"fine_labels": labels,
                b"coarse_labels": [0] * len(labels), b"filenames": [b"x.png"] * len(labels)}
        (folder / split).write_bytes(pickle.dumps(data, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{c}".encode() for c in range(100)]}))


def test_pm_lora_end_to_end_on_a_cifar_pickle_with_a_local_vit(tiny_vit, tmp_path):
    _cifar_tree(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--benchmark", "cifar100", "--method", "pm-lora", "--tasks", "2", "--data-dir", str(tmp_path),
                 "--out", str(out), "--quiet", "--set", f"backbone=hf:{tiny_vit}", "epochs=1", "batch_size=32",
                 "lora.rank=2"]) == 0
    results = json.loads((out / "results.json").read_text())
    order = json.loads((SPLITS / "cifar100.json").read_text())["class_order"]
    assert results["classes_per_task"][0] == [f"c{c}" for c in order[:50]]  # the committed order, any seed
    assert len(results["alphas"]) == 2 and results["config"]["data"]["augment"] is True


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/perturbmerge-pwned",))


def test_cifar_reader_refuses_code_in_a_pickle(tmp_path):
    path = tmp_path / "train"
    path.write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(UserError, match="global 'posix.system' is not allowed"):
        read_cifar_pickle(path)
    assert not Path("/tmp/perturbmerge-pwned").exists()


@pytest.mark.parametrize("name,classes", [("imagenet-r", 200), ("imagenet-a", 200), ("cifar100", 100), ("cub200", 200),
                                          ("domainnet", 345)])
def test_committed_split_files_are_the_seeded_permutation(name, classes):
    committed = json.loads((SPLITS / f"{name}.json").read_text())
    # the documented rule (docs/data.md): NumPy RandomState(1993)'s permutation, as in InfLoRA / SD-LoRA
    assert committed["class_order_seed"] == 1993 and committed["num_classes"] == classes
    assert committed["class_order"] == np.random.RandomState(1993).permutation(classes).tolist()
    assert committed == make_split_file(name, classes, NOTES[name])  # the generator writes exactly this file


@pytest.mark.parametrize("name,tasks,per_task", [("imagenet-r", 5, 40), ("imagenet-r", 10, 20), ("imagenet-r", 20, 10),
                                                 ("imagenet-a", 10, 20), ("cub200", 10, 20), ("cifar100", 10, 10),
                                                 ("domainnet", 5, 69)])
def test_split_file_tasks_are_equal_and_disjoint(name, tasks, per_task):
    from perturbmerge.data.base import task_class_groups

    order = json.loads((SPLITS / f"{name}.json").read_text())["class_order"]
    groups = task_class_groups(len(order), tasks, 0, order)
    assert [len(g) for g in groups] == [per_task] * tasks
    assert len(set(np.concatenate(groups).tolist())) == len(order)


def test_seeded_80_20_split_per_class():
    labels = np.repeat(np.arange(3), [10, 5, 2])
    is_train = seeded_train_split(labels)
    assert [int(is_train[labels == c].sum()) for c in range(3)] == [8, 4, 1]
    # one RandomState(0) stream over the classes in turn: class 0's permutation of 0..9 is [2, 8, 4, 9, 1, 6, 7,
    # 3, 0, 5], so 0 and 5 are held out; classes 1 and 2 continue the stream (pinned: NumPy's legacy stream is fixed)
    assert np.flatnonzero(is_train).tolist() == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 16]


def test_imagenet_r_folder_tree_and_its_errors(tmp_path):
    with pytest.raises(UserError, match="imagenet-r' not found"):
        get_benchmark("imagenet-r").load(request(0, 10, str(tmp_path), backbone="efficientnet-lite0"))
    for c in range(199):  # one class short of the split file
        for i in range(2):
            _png(tmp_path / "imagenet-r" / f"n{c:08d}" / f"{i}.jpg", c * 2 + i, size=8)
    with pytest.raises(UserError, match="the data has 199 classes but the split file splits/imagenet-r.json expects 200"):
        get_benchmark("imagenet-r").load(request(0, 10, str(tmp_path), backbone="efficientnet-lite0"))
    for i in range(2):
        _png(tmp_path / "imagenet-r" / "n99999999" / f"{i}.jpg", 1000 + i, size=8)
    stream = get_benchmark("imagenet-r").load(request(0, 10, str(tmp_path), backbone="efficientnet-lite0"))
    assert [t.num_classes for t in stream.tasks] == [20] * 10
    assert all(len(t.train) == 20 and len(t.test) == 20 for t in stream.tasks)  # 1 + 1 image per class
    with pytest.raises(UserError, match="do not divide into 7 equal tasks"):
        get_benchmark("imagenet-r").load(request(0, 7, str(tmp_path), backbone="efficientnet-lite0"))


def test_cub_uses_the_official_split(tmp_path):
    root = tmp_path / "CUB_200_2011"
    images, split = [], []
    for c in range(200):
        for i in range(2):
            relative = f"{c + 1:03d}.Bird_{c}/img_{i}.jpg"
            _png(root / "images" / relative, c * 2 + i, size=8)
            number = len(images) + 1
            images.append(f"{number} {relative}")
            split.append(f"{number} {1 if i == 0 else 0}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    stream = get_benchmark("cub200").load(request(0, 10, str(tmp_path), backbone="efficientnet-lite0"))
    assert sum(len(t.train) for t in stream.tasks) == 200 and sum(len(t.test) for t in stream.tasks) == 200
    (root / "train_test_split.txt").write_text("\n".join(split[:-1]) + "\n")
    with pytest.raises(UserError, match="not in train_test_split.txt"):
        get_benchmark("cub200").load(request(0, 10, str(tmp_path), backbone="efficientnet-lite0"))


def test_domainnet_lists_missing_is_a_clear_error(tmp_path):
    (tmp_path / "domainnet").mkdir()
    with pytest.raises(UserError, match=r"clipart_train.txt' not found"):
        get_benchmark("domainnet").load(request(0, 5, str(tmp_path), backbone="efficientnet-lite0"))


def test_augmentation_is_seeded_and_reduces_to_identity_and_flip():
    images = torch.randint(0, 256, (4, 3, 16, 12), dtype=torch.uint8)
    a = random_resized_crop_flip(images, torch.Generator().manual_seed(1))
    b = random_resized_crop_flip(images, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == images.shape and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    whole = random_resized_crop_flip(images, torch.Generator(), scale=(1.0, 1.0), ratio=(0.75, 0.75), flip=0.0)
    torch.testing.assert_close(whole, images.float() / 255)  # 16×12 is ratio 3/4: the crop is the whole image
    mirrored = random_resized_crop_flip(images, torch.Generator(), scale=(1.0, 1.0), ratio=(0.75, 0.75), flip=1.0)
    torch.testing.assert_close(mirrored, images.float().flip(-1) / 255)


def test_augmentation_with_a_cached_prefix_backbone_is_refused(tmp_path, capsys):
    _cifar_tree(tmp_path)
    assert main(["run", "--benchmark", "cifar100", "--method", "pm-lora", "--data-dir", str(tmp_path), "--out",
                 str(tmp_path / "o"), "--quiet", "--set", "backbone=efficientnet-lite0"]) == 2
    assert "set data.augment=false" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "paper").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_paper_configs_resolve_to_the_paper_protocol(path):
    from perturbmerge.runner import resolve_config

    config, _ = resolve_config(None, path)
    name, tasks = path.stem.rsplit("-", 1)
    assert (config.benchmark, config.tasks, config.method, config.backbone) == (name, int(tasks), "pm-lora", "vit-b16")
    assert (config.lr, config.head_lr, config.batch_size, config.lora.rank) == (1e-3, 1e-2, 256, 10)
    assert config.epochs == (5 if name == "domainnet" else 10)
    assert (config.epsilon, config.p0) == (0.5, pytest.approx(1 / 3)) and config.data.augment


def test_missing_vit_b16_weights_fail_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    config = Path(__file__).resolve().parents[1] / "configs" / "paper" / "imagenet-r-10.yaml"
    assert main(["run", "--config", str(config), "--data-dir", str(tmp_path), "--out",
                 str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "google/vit-base-patch16-224 is not in the local Hugging Face cache" in err and "imagenet-r" not in err


# ---- timm (optional extra) ------------------------------------------------------------------------------------
# timm needs torchvision, which has no CPU wheel on this machine, so these tests stand in a minimal module with the
# parts of timm's VisionTransformer the glue relies on: create_model(arch, pretrained, num_classes), a fused
# `attn.qkv` Linear per block, `num_features`, `pretrained_cfg`, pooled features from forward().
class _FakeTimmViT(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = torch.nn.Conv2d(3, 16, 8, 8)
        self.blocks = torch.nn.ModuleList()
        for _ in range(2):
            block = torch.nn.Module()
            block.attn = torch.nn.Module()
            block.attn.qkv = torch.nn.Linear(16, 48)
            block.attn.proj = torch.nn.Linear(16, 16)
            self.blocks.append(block)
        self.num_features = 16
        self.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        for block in self.blocks:
            q, k, v = block.attn.qkv(tokens).chunk(3, dim=-1)
            tokens = tokens + block.attn.proj((q @ k.transpose(1, 2) / 4).softmax(-1) @ v)
        return tokens.mean(1)


@pytest.fixture
def fake_timm(tmp_path, monkeypatch) -> Path:
    import sys
    import types

    from safetensors.torch import save_file

    module = types.ModuleType("timm")
    module.create_model = lambda architecture, pretrained, num_classes: _FakeTimmViT()
    monkeypatch.setitem(sys.modules, "timm", module)
    torch.manual_seed(0)
    folder = tmp_path / "timm-vit"
    folder.mkdir()
    save_file(_FakeTimmViT().state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_fake", "num_classes": 0,
                                                    "pretrained_cfg": {"input_size": [3, 32, 32]}}))
    return folder


def test_timm_backbone_puts_lora_on_the_fused_qkv_and_runs_end_to_end(fake_timm, tmp_path):
    from perturbmerge.backbones import get_backbone_spec

    spec = get_backbone_spec(f"timm:{fake_timm}")
    assert spec.modality == "image" and spec.image_size == 32
    backbone = spec.build(0)
    assert backbone.lora_targets == ["qkv"] and backbone.feature_dim == 16
    results = _pm_lora_on_an_image_folder(tmp_path, f"timm:{fake_timm}")
    assert "LoRA on ['qkv']" in results["backbone"] and len(results["alphas"]) == 2


def test_timm_errors(tmp_path, monkeypatch, capsys):
    import sys

    (tmp_path / "empty").mkdir()
    assert main(["run", "--benchmark", "digits", "--out", str(tmp_path / "o"), "--quiet", "--set",
                 f"backbone=timm:{tmp_path / 'empty'}"]) == 2
    assert "needs a timm checkpoint folder with config.json and model.safetensors" in capsys.readouterr().err
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"architecture": "vit_fake"}')
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed
    from perturbmerge.backbones import build_backbone

    with pytest.raises(UserError, match=r"needs timm; install the extra with `pip install 'perturbmerge\[timm\]'`"):
        build_backbone(f"timm:{folder}", 0)
