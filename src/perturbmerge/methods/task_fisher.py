"""The task-Fisher part: the diagonal Fisher of the current task at θ*_t, in merge space (unperturbed, eval mode),
averaged over every process's share of the task's training data (pm-method.md §2). The per-example loss is the
task kind's (kinds/; classification: `fisher.logits` task | seen, `fisher.kind` empirical | sampled).

    fisher.max_samples  a fixed random subset of the task's training data (default: all of it)
    fisher.batch_size   examples per forward/backward pass
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..config import FisherSettings
from ..fisher import KnownLength

if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext

KEYS = frozenset({"fisher.max_samples", "fisher.batch_size", "fisher.kind", "fisher.logits"})


def task_fisher(adaptation, context: "TaskContext", task: "Task", settings: FisherSettings
                ) -> dict[str, torch.Tensor]:
    """F_t per merge-space key: (1/N) Σ_n (∂ℓ_n/∂θ)² over the task's N (or `max_samples`) training examples, ℓ_n the
    kind's per-example loss."""
    total = len(task.train) if settings.max_samples is None else min(settings.max_samples, len(task.train))
    batches, example_loss = context.kind.fisher_loss(
        context, settings, context.batches(task.train, settings.batch_size, limit=total), adaptation.features)
    seen = [0]  # examples this process's Fisher averaged over (its rows of every batch)

    def counted(stream):
        for inputs, targets in stream:
            seen[0] += len(targets)
            yield inputs, targets

    batches = KnownLength(counted(batches), -(-total // settings.batch_size))  # the progress bar's total
    fisher = adaptation.fisher(batches, example_loss, context.progress, f"task {task.index + 1} Fisher")
    return context.mean_over_processes(fisher, seen[0], total)
