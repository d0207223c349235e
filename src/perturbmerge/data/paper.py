"""The paper's benchmarks, read from local copies (none of them can be downloaded here): ImageNet-R, ImageNet-A,
CIFAR-100, CUB-200 and DomainNet, with the protocol of InfLoRA / SD-LoRA / P&M.

`--data-dir PATH` is the folder that holds the data set's own folder:

    imagenet-r   PATH/imagenet-r/<wnid>/*.jpg                     200 classes; 80/20 train/test per class
    imagenet-a   PATH/imagenet-a/<wnid>/*.jpg                     200 classes; 80/20 train/test per class
    cifar100     PATH/cifar-100-python/{train,test,meta}          100 classes; official split (python pickles,
                 or PATH/cifar100/{train,test}/<class>/*.png       read by an allow-list unpickler), or image folders
    cub200       PATH/CUB_200_2011/{images.txt,train_test_split.txt,images/}   200 classes; official split
    domainnet    PATH/domainnet/<domain>/<class>/*.jpg and PATH/domainnet/<domain>_{train,test}.txt
                                                                  345 classes over 6 domains; official lists

The class order is a committed split file, `splits/<name>.json`: a permutation (NumPy RandomState(1993), the
seed of those works) of the class indices, where classes are indexed in sorted folder-name order (CIFAR-100: its
fine-label ids). Every run seed uses this one order, as in the papers. ImageNet-R and ImageNet-A have no official
split: each class's images, sorted by path, are shuffled with RandomState(0) and the first 80 % train (at least
one image each side). A data folder whose class count differs from the split file's is refused.

Training batches get random-resized-crop (scale 0.08–1, ratio 3/4–4/3) + horizontal flip (p = 0.5), as in those
works; evaluation and Fisher passes see the plain resized image.
"""
from __future__ import annotations

import importlib
import json
import pickle  # only through the allow-list `_ArrayUnpickler` below
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import UserError
from .base import BenchmarkSpec, LoadRequest, TaskStream, register_benchmark, task_class_groups, tasks_from_groups
from .custom import IMAGE_SUFFIXES, decode_images, list_image_folder
from .augment import random_resized_crop_flip

SPLITS = Path(__file__).parent / "splits"
CLASS_ORDER_SEED = 1993
TRAIN_FRACTION = 0.8
PAPER_DEFAULTS = {
    "epochs": 10, "batch_size": 256, "lr": 1e-3, "head_lr": 1e-2, "eval_batch_size": 256,
    "lora": {"rank": 10, "alpha": 20}, "epsilon": 0.5, "p0": 1.0 / 3.0,  # LoRA on key and value (the backbone's)
    "data": {"augment": True},
}


@dataclass
class Listing:
    """Every image of a data set: its class names (index order), paths, labels and official/assigned split."""

    class_names: list[str]
    paths: list[Path] | None  # None when the images are already arrays (CIFAR pickles)
    labels: np.ndarray
    is_train: np.ndarray
    arrays: torch.Tensor | None = None  # uint8 [N, 3, H, W] when given as arrays


def split_file(name: str) -> dict:
    return json.loads((SPLITS / f"{name}.json").read_text())


def make_split_file(name: str, num_classes: int, note: str) -> dict:
    """The committed split file's content (tests regenerate it and compare)."""
    order = np.random.RandomState(CLASS_ORDER_SEED).permutation(num_classes).tolist()
    return {"benchmark": name, "num_classes": num_classes, "class_order_seed": CLASS_ORDER_SEED,
            "class_order": order, "classes": "indices into the sorted class-folder names (cifar100: fine-label ids)",
            "train_test": note}


def _root(request: LoadRequest, folder: str, name: str) -> Path:
    if request.data_dir is None:
        raise UserError(f"benchmark '{name}' reads a local copy; pass --data-dir PATH where PATH/{folder} exists "
                        f"(README: 'Paper benchmarks')")
    root = Path(request.data_dir).expanduser() / folder
    if not root.is_dir():
        raise UserError(f"benchmark '{name}': folder '{root}' not found; pass --data-dir PATH with PATH/{folder} "
                        f"(README: 'Paper benchmarks')")
    return root


def seeded_train_split(labels: np.ndarray, fraction: float = TRAIN_FRACTION) -> np.ndarray:
    """Per class (items in path order), RandomState(0) shuffle, first ⌊fraction·n⌋ (1 ≤ · ≤ n − 1) train."""
    rng = np.random.RandomState(0)
    is_train = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < 2:
            raise UserError(f"class {c} has {len(members)} image; each class needs at least 2 (train and test)")
        is_train[members[: min(len(members) - 1, max(1, int(fraction * len(members))))]] = True
    return is_train


def _class_folders(root: Path) -> Listing:
    class_names, items = list_image_folder(root)
    labels = np.array([c for _, c in items])
    return Listing(class_names, [p for p, _ in items], labels, seeded_train_split(labels))


def _cub(root: Path) -> Listing:
    def table(name: str) -> dict[str, str]:
        path = root / name
        if not path.is_file():
            raise UserError(f"CUB-200: '{path}' not found; --data-dir must hold CUB_200_2011/ as released")
        return dict(line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())

    images, train = table("images.txt"), table("train_test_split.txt")
    ids = sorted(images, key=int)
    relative = [images[i].strip() for i in ids]
    class_names = sorted({r.split("/")[0] for r in relative})
    index = {name: c for c, name in enumerate(class_names)}
    missing = [i for i in ids if i not in train]
    if missing:
        raise UserError(f"CUB-200: image ids {missing[:3]} are not in train_test_split.txt; the files do not match")
    return Listing(class_names, [root / "images" / r for r in relative],
                   np.array([index[r.split("/")[0]] for r in relative]),
                   np.array([train[i].strip() == "1" for i in ids]))


DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


def _domainnet(root: Path) -> Listing:
    paths, labels, is_train = [], [], []
    names: dict[int, str] = {}
    for domain in DOMAINNET_DOMAINS:
        for split in ("train", "test"):
            listing = root / f"{domain}_{split}.txt"
            if not listing.is_file():
                raise UserError(f"DomainNet: '{listing}' not found; --data-dir must hold domainnet/ with the "
                                f"official <domain>_train.txt / <domain>_test.txt lists")
            for number, line in enumerate(listing.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    relative, label = line.rsplit(maxsplit=1)
                    label_id = int(label)
                except ValueError:
                    raise UserError(f"DomainNet: {listing} line {number} is not 'PATH LABEL'") from None
                names.setdefault(label_id, Path(relative).parts[-2])
                paths.append(root / relative.removeprefix("domainnet/"))
                labels.append(label_id)
                is_train.append(split == "train")
    return Listing([names[i] for i in sorted(names)], paths, np.array(labels), np.array(is_train))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and NumPy arrays (what CIFAR's python files hold); any other global — a
    function, a class, os.system — is refused, so a crafted file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # protocol-2 pickles from Python 3 store bytes as codecs.encode(str, latin1)

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return getattr(importlib.import_module(module), name)


def read_cifar_pickle(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            data = _ArrayUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError:
        raise UserError(f"CIFAR-100: '{path}' not found; --data-dir must hold cifar-100-python/ as released") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"CIFAR-100: '{path}' is not a CIFAR python file ({exc}); re-extract cifar-100-python.tar.gz")
    if not isinstance(data, dict):
        raise UserError(f"CIFAR-100: '{path}' does not hold a dict; re-extract cifar-100-python.tar.gz")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _cifar(request: LoadRequest) -> Listing:
    base = Path(request.data_dir).expanduser() if request.data_dir else None
    if base is not None and (base / "cifar100").is_dir() and not (base / "cifar-100-python").is_dir():
        train_names, train_items = list_image_folder(base / "cifar100" / "train")
        test_names, test_items = list_image_folder(base / "cifar100" / "test")
        if train_names != test_names:
            raise UserError("CIFAR-100 folders: train/ and test/ have different class folders; they must match")
        items = train_items + test_items
        return Listing(train_names, [p for p, _ in items], np.array([c for _, c in items]),
                       np.array([True] * len(train_items) + [False] * len(test_items)))
    root = _root(request, "cifar-100-python", "cifar100")
    parts = [read_cifar_pickle(root / split) for split in ("train", "test")]
    meta = read_cifar_pickle(root / "meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("fine_label_names", [])]
    arrays, labels = [], []
    for part in parts:
        if "data" not in part or "fine_labels" not in part:
            raise UserError("CIFAR-100: a file lacks 'data' or 'fine_labels'; re-extract cifar-100-python.tar.gz")
        arrays.append(np.asarray(part["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(part["fine_labels"], dtype=np.int64))
    return Listing(names, None, np.concatenate(labels),
                   np.array([True] * len(labels[0]) + [False] * len(labels[1])),
                   torch.from_numpy(np.concatenate(arrays)))


def _load(name: str, listing_of: Callable[[LoadRequest], Listing]) -> Callable[[LoadRequest], TaskStream]:
    def load(request: LoadRequest) -> TaskStream:
        split = split_file(name)
        listing = listing_of(request)
        if len(listing.class_names) != split["num_classes"]:
            raise UserError(f"benchmark '{name}': the data has {len(listing.class_names)} classes but the split file "
                            f"splits/{name}.json expects {split['num_classes']}; point --data-dir at the full data set")
        if split["num_classes"] % request.num_tasks:
            raise UserError(f"benchmark '{name}': {split['num_classes']} classes do not divide into {request.num_tasks} "
                            f"equal tasks; pick a --tasks that divides {split['num_classes']}")
        groups = task_class_groups(split["num_classes"], request.num_tasks, 0, split["class_order"])
        images = listing.arrays if listing.arrays is not None else decode_images(listing.paths, request)
        if listing.arrays is not None:  # CIFAR arrays: resize once to the backbone's size
            from ..backbones import get_backbone_spec

            size = get_backbone_spec(request.backbone).image_size
            images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                                     align_corners=False, antialias=True).round().clamp(0, 255)
            images = images.to(torch.uint8)
        train_idx, test_idx = np.flatnonzero(listing.is_train), np.flatnonzero(~listing.is_train)
        splits = {"train": train_idx, "test": test_idx}
        tasks = tasks_from_groups(
            groups, listing.class_names, listing.labels[train_idx], listing.labels[test_idx],
            lambda part, picks, positions: TensorDataset(images[splits[part][picks]], torch.from_numpy(positions)))
        augment = random_resized_crop_flip if request.data.augment else None
        return TaskStream(name, "class-incremental", request.backbone, tasks, train_augment=augment,
                          info={"examples": len(listing.labels), "classes": len(listing.class_names),
                                "image_size": images.shape[-1], "split_file": f"splits/{name}.json"})

    return load


NOTES = {
    "imagenet-r": "no official split: per class, images sorted by path, RandomState(0) shuffle, 80 % train",
    "imagenet-a": "no official split: per class, images sorted by path, RandomState(0) shuffle, 80 % train",
    "cifar100": "official train/test",
    "cub200": "official train_test_split.txt",
    "domainnet": "official <domain>_train.txt / <domain>_test.txt, all six domains pooled per class",
}
for _name, _folder, _classes, _tasks, _listing, _description in (
    ("imagenet-r", "imagenet-r", 200, 10, lambda r: _class_folders(_root(r, "imagenet-r", "imagenet-r")),
     "ImageNet-R (local copy), 200 classes; 5/10/20 tasks"),
    ("imagenet-a", "imagenet-a", 200, 10, lambda r: _class_folders(_root(r, "imagenet-a", "imagenet-a")),
     "ImageNet-A (local copy), 200 classes, 10 x 20"),
    ("cifar100", "cifar-100-python", 100, 10, _cifar, "CIFAR-100 (local copy), 10 x 10"),
    ("cub200", "CUB_200_2011", 200, 10, lambda r: _cub(_root(r, "CUB_200_2011", "cub200")),
     "CUB-200-2011 (local copy), 10 x 20"),
    ("domainnet", "domainnet", 345, 5, lambda r: _domainnet(_root(r, "domainnet", "domainnet")),
     "DomainNet (local copy), 345 classes, 5 x 69"),
):
    register_benchmark(BenchmarkSpec(
        name=_name, description=_description, scenario="class-incremental", backbone="vit-b16", modality="image",
        default_tasks=_tasks, load=_load(_name, _listing),
        defaults={**PAPER_DEFAULTS, **({"epochs": 5} if _name == "domainnet" else {})},
        data_keys=frozenset({"augment"}),
    ))

__all__ = ["IMAGE_SUFFIXES", "make_split_file", "read_cifar_pickle", "seeded_train_split", "split_file"]
