"""`digits`: scikit-learn's bundled 8×8 digits (1,797 images, 10 classes), class-incremental, 5 × 2 classes.

Instant and offline: the data ships inside the scikit-learn wheel. Pixels scaled to [0, 1]; a stratified
70/30 train/test split fixed once (split seed 0, independent of the run seed); the class order follows the
run seed. A smoke benchmark for tests and quick runs, with a small MLP backbone (not pretrained).
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .base import BenchmarkSpec, LoadRequest, TaskStream, class_incremental_tasks, register_benchmark

TEST_FRACTION = 0.3


def load(request: LoadRequest) -> TaskStream:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=0)
    tasks = class_incremental_tasks(
        torch.from_numpy(train_x), train_y, torch.from_numpy(test_x), test_y,
        [str(d) for d in range(10)], request.num_tasks, request.seed,
    )
    return TaskStream("digits", "class-incremental", "mlp", tasks, info={"train": len(train_y), "test": len(test_y)})


SPEC = register_benchmark(
    BenchmarkSpec(
        name="digits",
        description="scikit-learn 8x8 digits, 5 tasks x 2 classes, MLP backbone (smoke benchmark, seconds)",
        scenario="class-incremental",
        backbone="mlp",
        modality="vector",
        default_tasks=5,
        load=load,
        defaults={"epochs": 5, "batch_size": 32, "lr": 3e-3, "head_lr": 1e-2},
    )
)
