"""Classifier heads and the continual classifier (pm-method.md §5).

`ExpandingLinearHead` keeps one linear block per task: task t's classes get their own [n_t, d] block, trained
only while task t trains (its logits alone enter the loss), then frozen. Separate parameters per block make
"earlier rows frozen" exact: no optimiser, weight decay or moment ever touches them again. Head rows are not
merged. At test time all seen blocks are concatenated and every seen class competes (no task id).

For domain-incremental streams one shared block is trained in every task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .errors import UserError


class ExpandingLinearHead(nn.Module):
    """Logits over all classes seen so far: concatenation of per-task linear blocks."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.blocks = nn.ModuleList()

    @property
    def num_classes(self) -> int:
        return sum(block.out_features for block in self.blocks)

    def add_block(self, num_classes: int) -> nn.Linear:
        """New rows for a task's classes; earlier blocks are frozen."""
        for block in self.blocks:
            block.requires_grad_(False)
        block = nn.Linear(self.feature_dim, num_classes)
        device = next(self.parameters()).device if len(self.blocks) else None
        if device is not None:
            block.to(device)
        self.blocks.append(block)
        return block

    def block_logits(self, features: torch.Tensor, index: int) -> torch.Tensor:
        """Logits of one block only (the masked loss of the task that owns it)."""
        return self.blocks[index](features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([block(features) for block in self.blocks], dim=-1)


def pretrained_features(backbone: nn.Module, pretrained: dict[str, torch.Tensor], inputs: Any) -> torch.Tensor:
    """The backbone's features with the pretrained values of some of its weights (names as in
    `backbone.named_parameters()`) swapped in for this call only; no second copy of the backbone is kept."""
    return functional_call(backbone, pretrained, (inputs,), strict=False)


@dataclass
class PretrainedEnsemble:
    """Log-linear ensemble with the LDA head of the pretrained backbone (head.frozen_weight = w > 0):

        score_c(x) = log softmax_c(head(f_θ̂(x))) + w · log softmax_c(head₀(f_θ₀(x)))

    f_θ₀: the same backbone called with the pretrained merge-space weights; head₀(f) = f Wᵀ + b, the LDA rows of
    the class statistics taken on θ₀, which never drift (a zero row for a head position without statistics)."""

    pretrained: dict[str, torch.Tensor]
    rows: torch.Tensor  # [C, d]
    biases: torch.Tensor  # [C]
    weight: float

    def combine(self, logits: torch.Tensor, backbone: nn.Module, inputs: Any) -> torch.Tensor:
        reference = pretrained_features(backbone, self.pretrained, inputs) @ self.rows.T + self.biases
        if reference.shape != logits.shape:
            raise RuntimeError(f"pretrained-backbone head has {reference.shape[-1]} classes, the model's "
                               f"{logits.shape[-1]}: the ensemble was not rebuilt after the last task")
        return logits.log_softmax(-1) + self.weight * reference.log_softmax(-1)


class ContinualClassifier(nn.Module):
    """backbone (one input → [N, d] features) + expanding head; with `classifier` set (RanPAC), its logits instead
    of the head's; with `ensemble` set (by the method, once every seen class has rows in it), the scores of
    `PretrainedEnsemble` instead of the logits."""

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ExpandingLinearHead(feature_dim)
        self.ensemble: PretrainedEnsemble | None = None  # a plain attribute: not part of the model's state_dict
        self.classifier: Any = None  # replaces the head's logits when set (RanPAC: `.logits(features)`); plain too

    def forward(self, inputs: Any) -> torch.Tensor:
        features = self.backbone(inputs)
        logits = self.head(features) if self.classifier is None else self.classifier.logits(features)
        return logits if self.ensemble is None else self.ensemble.combine(logits, self.backbone, inputs)


class GaussianClassStatistics:
    """What a shared-covariance Gaussian classifier (LDA) over every seen class needs, with no example kept:
    per-class feature sums s_c and counts n_c, and the second moment M = Σ_x x xᵀ of all training features seen
    (float64; each task adds its own, on the backbone of that moment, so old classes keep their statistics).

        μ_c = s_c / n_c,   S_w = M − Σ_c n_c μ_c μ_cᵀ,   Σ = S_w / (N − C)           (pooled within-class)
        Σ_γ = (1 − γ) Σ + γ (tr Σ / d) I                                          (shrinkage, head.shrinkage)
        logit_c(f) = μ_cᵀ Σ_γ⁻¹ f − ½ μ_cᵀ Σ_γ⁻¹ μ_c                                (equal class priors)

    The arg-max of these logits is the Bayes rule for Gaussian classes with one shared covariance; unlike a
    per-task softmax head, all classes' rows are fitted jointly, so no task's logits are on their own scale.
    """

    def __init__(self) -> None:
        self.sums: dict[int, torch.Tensor] = {}  # global head position -> Σ x over its examples
        self.counts: dict[int, float] = {}
        self.second_moment: torch.Tensor | None = None

    def add(self, positions: list[int], sums: torch.Tensor, counts: torch.Tensor,
            second_moment: torch.Tensor | None = None) -> None:
        """Add one task's statistics; row r of `sums`/`counts` belongs to global head position positions[r]
        (positions recur across domains in domain-incremental streams). Without `second_moment` only the class
        means are kept (enough for prototypes, not for `classifier`)."""
        for row, position in enumerate(positions):
            if counts[row] > 0:
                self.sums[position] = self.sums.get(position, 0) + sums[row].double().cpu()
                self.counts[position] = self.counts.get(position, 0.0) + float(counts[row])
        if second_moment is not None:
            moment = second_moment.double().cpu()
            self.second_moment = moment if self.second_moment is None else self.second_moment + moment

    def means(self) -> dict[int, torch.Tensor]:
        return {p: self.sums[p] / self.counts[p] for p in self.sums}

    def pooled_variance(self) -> float:
        """tr Σ: the expected squared distance of a feature to its class mean."""
        means = self.means()
        within = float(self.second_moment.trace()) - sum(self.counts[p] * float(m @ m) for p, m in means.items())
        return within / max(sum(self.counts.values()) - len(means), 1.0)

    def shift_means(self, shifts: dict[int, torch.Tensor]) -> None:
        """μ_c ← μ_c + δ_c with each class's scatter kept: s_c += n_c δ_c, M += n_c (μ'_c μ'_cᵀ − μ_c μ_cᵀ)."""
        for position, shift in shifts.items():
            n, old = self.counts[position], self.sums[position] / self.counts[position]
            new = old + shift.double().cpu()
            self.sums[position] = new * n
            self.second_moment += n * (torch.outer(new, new) - torch.outer(old, old))

    def move_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Move every stored example x ↦ xW + b (row vectors), exactly, through its statistics:
        s_c ← s_c W + n_c b,  M ← WᵀMW + (SW)ᵀb + bᵀ(SW) + N bᵀb  (S = Σ_c s_c, N = Σ_c n_c)."""
        weight, bias = weight.double().cpu(), bias.double().cpu()
        total_sum = sum(self.sums.values()) @ weight
        total_count = sum(self.counts.values())
        for position in self.sums:
            self.sums[position] = self.sums[position] @ weight + self.counts[position] * bias
        self.second_moment = (weight.T @ self.second_moment @ weight + torch.outer(total_sum, bias)
                              + torch.outer(bias, total_sum) + total_count * torch.outer(bias, bias))

    def classifier(self, shrinkage: float) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
        """(weight row, bias) per known head position: w_c = Σ_γ⁻¹ μ_c, b_c = −½ μ_cᵀ Σ_γ⁻¹ μ_c."""
        positions = sorted(self.sums)
        known = self.means()
        means = torch.stack([known[p] for p in positions])  # [C, d]
        counts = torch.tensor([self.counts[p] for p in positions], dtype=torch.float64)
        degrees = float(counts.sum()) - len(positions)
        if degrees <= 0:
            raise UserError(f"head.kind=lda needs more training examples ({int(counts.sum())}) than classes "
                            f"({len(positions)}); use head.kind=prototype")
        within = self.second_moment - (means.T * counts) @ means
        covariance = (within + within.T) / (2 * degrees)
        dim = covariance.shape[0]
        shrunk = (1 - shrinkage) * covariance + shrinkage * (covariance.trace() / dim) * torch.eye(dim, dtype=torch.float64)
        try:
            weights = torch.linalg.solve(shrunk, means.T).T  # rows Σ_γ⁻¹ μ_c
        except torch.linalg.LinAlgError:
            raise UserError(f"head.kind=lda: the pooled feature covariance is singular ({dim} dimensions, "
                            f"{degrees:.0f} degrees of freedom); set head.shrinkage > 0, e.g. 0.1") from None
        biases = -0.5 * (weights * means).sum(1)
        return ({p: weights[i] for i, p in enumerate(positions)}, {p: float(biases[i]) for i, p in enumerate(positions)})

    def dense_classifier(self, shrinkage: float, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`classifier` as a [num_classes, d] row matrix and [num_classes] biases (zeros where no statistics)."""
        weights, biases = self.classifier(shrinkage)
        rows = torch.zeros(num_classes, self.second_moment.shape[0], dtype=torch.float64)
        offsets = torch.zeros(num_classes, dtype=torch.float64)
        for position, row in weights.items():
            rows[position], offsets[position] = row, biases[position]
        return rows, offsets

    @torch.no_grad()
    def write_rows(self, head: ExpandingLinearHead, shrinkage: float) -> None:
        """Every block's rows ← the LDA rows of its classes; block rows are head positions in order (one shared
        block in domain-incremental streams). Positions without statistics keep their rows."""
        weights, biases = self.classifier(shrinkage)
        offset = 0
        for block in head.blocks:
            for row in range(block.out_features):
                if offset + row in weights:
                    block.weight[row] = weights[offset + row].to(block.weight)
                    block.bias[row] = biases[offset + row]
            offset += block.out_features

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "counts": self.counts, "second_moment": self.second_moment}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])
        self.second_moment = state["second_moment"]


def fit_affine_drift(count: torch.Tensor, sum_before: torch.Tensor, sum_after: torch.Tensor,
                     gram_before: torch.Tensor, cross: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression of features after a merge (z′) on features before it (z), towards the identity, from the
    moments n, Σz, Σz′, ΣzᵀZ, Σzᵀz′ of paired rows:

        W = argmin ‖Z̃′ − Z̃W‖² + λ‖W − I‖² = (Z̃ᵀZ̃ + λI)⁻¹ (Z̃ᵀZ̃′ + λI),   b = z̄′ − z̄W,
        λ = ridge · tr(Z̃ᵀZ̃) / d   (Z̃, Z̃′: centred rows; λ scales with the features' variance)."""
    n = float(count)
    if n < 2:
        raise ValueError(f"a linear drift map needs at least 2 paired feature rows, got {n:g}")
    mean_before, mean_after = sum_before / n, sum_after / n
    gram = gram_before - n * torch.outer(mean_before, mean_before)
    centred_cross = cross - n * torch.outer(mean_before, mean_after)
    dim = gram.shape[0]
    lam = ridge * float(gram.trace()) / dim
    if not lam > 0:
        raise ValueError("a linear drift map needs features that vary across the current task's examples")
    eye = torch.eye(dim, dtype=gram.dtype)
    weight = torch.linalg.solve(gram + lam * eye, centred_cross + lam * eye)
    return weight, mean_after - mean_before @ weight

