"""Drift compensation of the stored class statistics (head.drift), before the fold: the task's own training data
seen at θ̂_{t−1} = θ*_t − Δ_t and at θ̂_t = θ̂_{t−1} + α Δ_t (the adapter still holds Δ_t).

    sdc      semantic drift compensation (Yu et al., 2020) of the class means
    linear   an affine map x ↦ xW + b fitted from the task's features, applied to means and covariance
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch

from ..heads import GaussianClassStatistics, fit_affine_drift

if TYPE_CHECKING:
    from ..data import Task
    from .fecam import ClassGaussians
    from ..context import TaskContext


@torch.no_grad()
def features_before_and_after_merge(adaptation, context: "TaskContext", task: "Task", alpha: float
                                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch of this process's share of the task's training data (eval mode, float64): the features at
    θ̂_{t−1} and at θ̂_t."""
    context.model.eval()
    for inputs, _ in context.batches(task.train, context.eval_batch_size):
        yield (adaptation.features_along_task_vector(inputs, -1.0).double(),
               adaptation.features_along_task_vector(inputs, alpha - 1.0).double())


@torch.no_grad()
def semantic_drift(statistics: GaussianClassStatistics, adaptation, context: "TaskContext", task: "Task",
                   alpha: float) -> float:
    """With z_i the features at θ̂_{t−1} and z'_i at θ̂_t, each old class mean moves by

        δ_c = Σ_i w_ic (z'_i − z_i) / Σ_i w_ic,   w_ic = exp(−‖z_i − μ_c‖² / (2 tr Σ))

    (tr Σ: the pooled within-class variance, so a typical member of class c has weight e^{−1/2}).
    Returns the mean ‖δ_c‖ over the old classes."""
    positions = sorted(statistics.sums)
    known = statistics.means()
    means = torch.stack([known[p] for p in positions]).to(context.device)
    bandwidth = 2 * statistics.pooled_variance()
    weighted = torch.zeros_like(means)
    weights = torch.zeros(len(positions), dtype=torch.float64, device=context.device)
    for before, after in features_before_and_after_merge(adaptation, context, task, alpha):
        kernel = torch.exp(-torch.cdist(before, means).pow(2) / bandwidth)  # [B, C]
        weights += kernel.sum(0)
        weighted += kernel.T @ (after - before)
    weights, weighted = context.world.sum_(weights), context.world.sum_(weighted)
    shifts = {p: weighted[i] / weights[i] for i, p in enumerate(positions) if weights[i] > 0}
    statistics.shift_means(shifts)
    return float(torch.stack([v.norm() for v in shifts.values()]).mean()) if shifts else 0.0


@torch.no_grad()
def linear_drift(statistics: "GaussianClassStatistics | ClassGaussians", adaptation, context: "TaskContext", task: "Task",
                 alpha: float, ridge: float) -> float:
    """Fit x ↦ xW + b from the task's features z_i at θ̂_{t−1} to z'_i at θ̂_t (`fit_affine_drift`), then move every
    stored class's statistics by it (`GaussianClassStatistics.move_affine`, or FeCAM's per-class
    `ClassGaussians.move_affine`). Returns the mean ‖δ_c‖ over the old
    classes, δ_c = μ_c W + b − μ_c."""
    dim = next(iter(statistics.sums.values())).shape[0]
    moments = [torch.zeros((), dtype=torch.float64, device=context.device),  # n, Σz, Σz', Σzᵀz, Σzᵀz'
               *(torch.zeros(dim, dtype=torch.float64, device=context.device) for _ in range(2)),
               *(torch.zeros(dim, dim, dtype=torch.float64, device=context.device) for _ in range(2))]
    for before, after in features_before_and_after_merge(adaptation, context, task, alpha):
        for accumulated, part in zip(moments, (len(before), before.sum(0), after.sum(0), before.T @ before,
                                               before.T @ after)):
            accumulated += part
    weight, bias = fit_affine_drift(*(context.world.sum_(m).cpu() for m in moments), ridge)
    old = statistics.means()
    statistics.move_affine(weight, bias)
    new = statistics.means()
    return float(torch.stack([(new[p] - old[p]).norm() for p in old]).mean())
