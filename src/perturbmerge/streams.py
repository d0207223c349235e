"""Named random streams of a run. Each has its own generator seeded from the run seed by a fixed rule, apart from
torch's global stream (initialisations, dropout), so adding a draw to one stream never shifts another; a
checkpoint stores each generator's state.

    perturbation        s + 7919                 the ±ε draw of every optimiser step (pm-method.md §3)
    gaussian_noise      s + 104729               the isotropic direction of the Gaussian-perturbation ablation
    dare_masks          s + 15485863             DARE's drop masks, one draw per task
    random_projection   s + 32452843             RanPAC's fixed projection W_rand (head.kind = ranpac)
    fisher_labels       7919·s + t               labels drawn from the model (fisher.kind=sampled), per task t
    training_order      1000003·s + 1009·t + e   the shuffle of task t's epoch e (data/loaders.py)
"""
from __future__ import annotations

import torch

_OFFSETS = {"perturbation": 7919, "gaussian_noise": 104729, "dare_masks": 15485863,
            "random_projection": 32452843}


def stream_seed(run_seed: int, name: str) -> int:
    """The seed of the run-long stream `name` (perturbation, gaussian_noise, dare_masks, random_projection)."""
    if name not in _OFFSETS:
        raise KeyError(f"unknown random stream '{name}'; known: {', '.join(_OFFSETS)}")
    return run_seed + _OFFSETS[name]


def generator(run_seed: int, name: str) -> torch.Generator:
    """A fresh CPU generator of the run-long stream `name`."""
    return torch.Generator().manual_seed(stream_seed(run_seed, name))


def fisher_labels_seed(run_seed: int, task_index: int) -> int:
    return run_seed * 7_919 + task_index


def training_order_seed(run_seed: int, task_index: int, epoch: int) -> int:
    """The seed of one epoch's shuffle (task index t from 0)."""
    return run_seed * 1_000_003 + task_index * 1009 + epoch
