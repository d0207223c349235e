"""The batches a run sees, as public functions: a hand-written loop that uses them gets the CLI's batches exactly.

- Training: shuffled, from a generator seeded per (run seed, task, epoch), so an epoch's order does not depend on
  anything else that happened in the run (resume mid-epoch, extra evaluation passes).
- Evaluation, Fisher and statistics passes: in order of input length where the data has lengths (dynamic padding
  then pads little), which changes no result that is a sum or a mean over the examples.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from ..streams import training_order_seed


def training_loader(dataset: Dataset, batch_size: int, collate: Callable[[list], Any] | None, run_seed: int,
                    task_index: int, epoch: int) -> DataLoader:
    """Epoch `epoch` of task `task_index`'s training batches, shuffled as `perturbmerge run --seed run_seed`."""
    generator = torch.Generator().manual_seed(training_order_seed(run_seed, task_index, epoch))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate)


def evaluation_loader(dataset: Dataset, batch_size: int, collate: Callable[[list], Any] | None) -> DataLoader:
    """Batches in order of input length (`dataset.lengths`) where known, else in dataset order."""
    lengths = getattr(dataset, "lengths", None)
    order = sorted(range(len(dataset)), key=lengths.__getitem__) if lengths is not None else None
    # An explicit generator: without one, every DataLoader iteration draws from the global torch RNG, so an extra
    # evaluation or Fisher pass would change the next task's LoRA initialisation.
    return DataLoader(dataset, batch_size=batch_size, sampler=order, collate_fn=collate,
                      generator=torch.Generator().manual_seed(0))
