"""The task-Fisher part: the diagonal Fisher of the current task at θ*_t, in merge space (unperturbed, eval mode),
averaged over every process's share of the task's training data (pm-method.md §2).

    fisher.logits       'task': the loss over the current task's logits (the masked training loss, default);
                        'seen': over every seen class's logits, labels as global head positions
    fisher.kind         'empirical': gradients at the true labels (default); 'sampled': at labels drawn from the
                        model's predictive distribution (one draw per example, seeded per task), the true Fisher
    fisher.max_samples  a fixed random subset of the task's training data (default: all of it)
    fisher.batch_size   examples per forward/backward pass
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch

from ..config import FisherSettings
from ..fisher import KnownLength
from ..streams import fisher_labels_seed

if TYPE_CHECKING:
    from ..data import Task
    from ..learner import ContinualLearner

KEYS = frozenset({"fisher.max_samples", "fisher.batch_size", "fisher.kind", "fisher.logits"})


def task_fisher(adaptation, learner: "ContinualLearner", task: "Task", settings: FisherSettings,
                run_seed: int) -> dict[str, torch.Tensor]:
    """F_t per merge-space key: (1/N) Σ_n (∂ℓ_n/∂θ)² over the task's N (or `max_samples`) training examples."""
    total = len(task.train) if settings.max_samples is None else min(settings.max_samples, len(task.train))
    batches: Iterable = learner.local_batches(task.train, settings.batch_size, limit=total)
    logits_fn = learner.task_logits
    if settings.logits == "seen":
        logits_fn = learner.model.head
        batches = ((inputs, labels + task.label_offset) for inputs, labels in batches)
    if settings.kind == "sampled":
        batches = model_sampled_labels(adaptation, batches, logits_fn,
                                       torch.Generator().manual_seed(fisher_labels_seed(run_seed, task.index)))
    seen = [0]  # examples this process's Fisher averaged over (its rows of every batch)

    def counted(stream):
        for inputs, labels in stream:
            seen[0] += len(labels)
            yield inputs, labels

    batches = KnownLength(counted(batches), -(-total // settings.batch_size))  # the progress bar's total
    fisher = adaptation.fisher(batches, logits_fn, None, learner.progress, f"task {task.index + 1} Fisher")
    return learner.mean_over_processes(fisher, seen[0], total)


def model_sampled_labels(adaptation, batches: Iterable, logits_fn: Callable[[torch.Tensor], torch.Tensor],
                         generator: torch.Generator) -> Iterator[tuple[Any, torch.Tensor]]:
    """The batches with labels replaced by draws y ~ softmax(logits) of the current model."""
    for inputs, _ in batches:
        with torch.no_grad():
            probabilities = logits_fn(adaptation.features(inputs)).double().softmax(-1).cpu()
        labels = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
        yield inputs, labels.to(_device_of(inputs))


def _device_of(inputs: Any) -> torch.device:
    return next(iter(inputs.values())).device if isinstance(inputs, dict) else inputs.device
