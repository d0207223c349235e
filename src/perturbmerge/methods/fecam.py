"""The FeCAM head (Goswami et al., NeurIPS 2023) as a head part: one Gaussian per class with its own covariance, and
the Mahalanobis distance between L2-normalised vectors (as the authors' code and Avalanche's FeCAMClassifier do):

    Σ_c = (Σ_x xxᵀ − n_c μ_c μ_cᵀ) / (n_c − 1)                       per class, from sums (no example kept)
    shrink twice: Σ ← Σ + γ₁ mean(diag Σ) I + γ₂ mean(off-diagonal Σ ≠ 0) (1 − I)       (γ₁ = γ₂ = 1)
    normalise:    Σ ← Σ / (σ σᵀ),  σ = √diag Σ                                          (a correlation matrix)
    logit_c(f) = −(f̂ − μ̂_c)ᵀ Σ_c⁺ (f̂ − μ̂_c),  f̂ = f/‖f‖, μ̂_c = μ_c/‖μ_c‖,  Σ⁺ the pseudo-inverse

Without the Tukey transform of the features (the authors advise against it for pretrained transformers, whose
features are not non-negative). Each class's statistics are taken on the backbone at the end of its own task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch


if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext

SHRINK_DIAGONAL, SHRINK_OFF_DIAGONAL = 1.0, 1.0


def shrink(covariance: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(covariance.shape[0], dtype=covariance.dtype, device=covariance.device)
    off = covariance * (1 - eye)
    nonzero = off != 0
    off_mean = off[nonzero].mean() if nonzero.any() else covariance.new_zeros(())
    return covariance + SHRINK_DIAGONAL * covariance.diagonal().mean() * eye + SHRINK_OFF_DIAGONAL * off_mean * (1 - eye)


def class_covariance(sums: torch.Tensor, count: float, moment: torch.Tensor) -> torch.Tensor:
    """Σ_c = (Σ_x xxᵀ − n_c μ_c μ_cᵀ) / (n_c − 1) from a class's sums (a single example: divided by 1)."""
    mean = sums / count
    return (moment - count * torch.outer(mean, mean)) / max(count - 1.0, 1.0)


def class_precision(sums: torch.Tensor, count: float, moment: torch.Tensor) -> torch.Tensor:
    """Σ_c⁺ after shrinking twice and normalising to a correlation matrix.

    The matrix is symmetric, so the pseudo-inverse is taken through its eigendecomposition (hermitian=True): the
    SVD route of the CPU wheel's LAPACK failed to converge, with one thread, on a 1280×1280 correlation matrix whose
    condition number is 301 (pm-lora-fecam, digits-domains, seed 0)."""
    covariance = shrink(shrink(class_covariance(sums, count, moment)))
    deviation = covariance.diagonal().sqrt()
    return torch.linalg.pinv(covariance / torch.outer(deviation, deviation), hermitian=True)


@dataclass
class MahalanobisClassifier:
    """The deployed FeCAM head (a plain attribute of the model, not in its state)."""

    means: torch.Tensor  # [C, d], L2-normalised
    precisions: torch.Tensor  # [C, d, d]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize(features.to(self.means.dtype), dim=-1)
        difference = unit.unsqueeze(1) - self.means.unsqueeze(0)  # [N, C, d]
        distance = torch.einsum("ncd,cde,nce->nc", difference, self.precisions, difference)
        return (-distance).to(features.dtype)


class ClassGaussians:
    def __init__(self) -> None:
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, float] = {}
        self.moments: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def add_task(self, context: "TaskContext", task: "Task") -> dict[str, Any]:
        """Add each of the task's classes' sum, count and second moment on the backbone as it is now (summed
        over processes first; a class met again, as in domain-incremental streams, adds to what it had)."""
        context.model.eval()
        dim = context.model.head.feature_dim
        sums = torch.zeros(task.num_classes, dim, dtype=torch.float64)
        counts = torch.zeros(task.num_classes, dtype=torch.float64)
        moments = torch.zeros(task.num_classes, dim, dim, dtype=torch.float64)
        for inputs, labels in context.batches(task.train, context.eval_batch_size):
            features, labels = context.model.backbone(inputs).double().cpu(), labels.cpu()
            sums.index_add_(0, labels, features)
            counts.index_add_(0, labels, torch.ones(len(labels), dtype=torch.float64))
            for row in labels.unique().tolist():
                picked = features[labels == row]
                moments[row] += picked.T @ picked
        sums, counts, moments = (context.summed(t) for t in (sums, counts, moments))
        for row in range(task.num_classes):
            position = task.label_offset + row
            self.sums[position] = self.sums.get(position, 0) + sums[row]
            self.counts[position] = self.counts.get(position, 0.0) + float(counts[row])
            self.moments[position] = self.moments.get(position, 0) + moments[row]
        return {}

    def means(self) -> dict[int, torch.Tensor]:
        return {p: self.sums[p] / self.counts[p] for p in self.sums}

    def move_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Move every stored example x ↦ xW + b (row vectors) through its class's statistics (head.drift=linear):
        s_c ← s_c W + n_c b,  M_c ← WᵀM_cW + (s_cW)ᵀb + bᵀ(s_cW) + n_c bᵀb."""
        weight, bias = weight.double().cpu(), bias.double().cpu()
        for p in self.sums:
            moved = self.sums[p] @ weight
            self.moments[p] = (weight.T @ self.moments[p] @ weight + torch.outer(moved, bias)
                               + torch.outer(bias, moved) + self.counts[p] * torch.outer(bias, bias))
            self.sums[p] = moved + self.counts[p] * bias

    def classifier(self, device: torch.device) -> MahalanobisClassifier:
        positions = sorted(self.sums)
        means = torch.stack([torch.nn.functional.normalize(self.sums[p] / self.counts[p], dim=0) for p in positions])
        precisions = torch.stack([class_precision(self.sums[p], self.counts[p], self.moments[p]) for p in positions])
        return MahalanobisClassifier(means.to(device), precisions.to(device))

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "counts": self.counts, "moments": self.moments}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.sums, self.counts, self.moments = dict(state["sums"]), dict(state["counts"]), dict(state["moments"])
