"""Merge rules as pure functions over dicts of tensors, and the constant-memory running merge state.

Notation (pm-method.md §1): θ̂_{t-1} is the merged (inference) model before task t, θ*_t the model after
training task t, Δ_t = θ*_t − θ̂_{t-1} the task vector, F_i the diagonal Fisher of task i at θ*_i.

    θ̂_t = θ̂_{t-1} + α_t Δ_t
    α_t* = − Σ_{i≤t} (θ̂_{t-1} − θ*_i)ᵀ F_i Δ_t  /  Σ_{i≤t} Δ_tᵀ F_i Δ_t          (rule "closed_form")
    α_t  =   Δ_tᵀ F_t Δ_t  /  Σ_{i≤t} Δ_tᵀ F_i Δ_t                             (rule "simplified")

All dot products are accumulated in float64.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .errors import UserError

TensorDict = Mapping[str, torch.Tensor]

ALPHA_RULES = ("closed_form", "simplified", "fixed", "average")


class AlphaFallbackWarning(UserWarning):
    """The closed-form denominator was zero or not finite, so α = 1 was used."""


@dataclass(frozen=True)
class AlphaDecision:
    """The α applied for one task, and what each rule would have said.

    alpha: the value used to merge. raw: the unclipped closed form (None when undefined).
    simplified: the simplified rule (None when undefined). fallback: the zero/non-finite denominator
    fallback to α = 1 was taken.
    """

    alpha: float
    raw: float | None
    simplified: float | None
    fallback: bool


def _check_keys(reference: TensorDict, other: TensorDict, what: str) -> None:
    if set(reference) != set(other):
        missing = sorted(set(reference) - set(other))[:3]
        extra = sorted(set(other) - set(reference))[:3]
        raise ValueError(f"{what} has different keys from the task vector (missing {missing}, extra {extra})")


def _weighted_dot(a: TensorDict, b: TensorDict, weight: TensorDict) -> float:
    """Σ_k a_k · w_k · b_k over every key and element, in float64."""
    total = torch.zeros((), dtype=torch.float64)
    for key, a_k in a.items():
        total += (a_k.double() * weight[key].double() * b[key].double()).sum().cpu()
    return float(total)


def alpha_terms(
    prev_merged: TensorDict,
    task_vector: TensorDict,
    fishers: Sequence[TensorDict],
    optima: Sequence[TensorDict],
) -> tuple[float, float]:
    """Numerator and denominator of the general closed form, from stored per-task (F_i, θ*_i) (reference).

    numerator = − Σ_i (θ̂_{t-1} − θ*_i)ᵀ F_i Δ_t,   denominator = Σ_i Δ_tᵀ F_i Δ_t.
    """
    if len(fishers) != len(optima) or not fishers:
        raise ValueError("fishers and optima must be non-empty lists of the same length (one per task i ≤ t)")
    numerator = 0.0
    denominator = 0.0
    for fisher, optimum in zip(fishers, optima):
        _check_keys(task_vector, fisher, "a Fisher")
        _check_keys(task_vector, optimum, "an optimum")
        gap = {k: prev_merged[k].double() - optimum[k].double() for k in task_vector}
        numerator -= _weighted_dot(gap, task_vector, fisher)
        denominator += _weighted_dot(task_vector, task_vector, fisher)
    return numerator, denominator


def _ratio_or_none(numerator: float, denominator: float) -> float | None:
    if denominator == 0.0 or not math.isfinite(denominator) or not math.isfinite(numerator):
        return None
    return numerator / denominator


def decide_alpha(
    rule: str,
    numerator: float,
    denominator: float,
    simplified_numerator: float,
    task_number: int,
    fixed_alpha: float | None = None,
    clip: bool = True,
) -> AlphaDecision:
    """Turn closed-form terms into the α to apply under `rule` (pm-method.md §1 decisions).

    closed_form / simplified: ratio clipped to [0, 1]; α = 1 with a warning if the denominator is 0 or
    not finite. fixed: `fixed_alpha`. average: 1 / task_number (continual model averaging).
    """
    if rule not in ALPHA_RULES:
        raise UserError(f"unknown alpha_rule '{rule}'; choose one of {', '.join(ALPHA_RULES)}")
    raw = _ratio_or_none(numerator, denominator)
    simplified = _ratio_or_none(simplified_numerator, denominator)
    fallback = False
    if rule == "fixed":
        if fixed_alpha is None:
            raise UserError("alpha_rule 'fixed' needs fixed_alpha; set it with --set fixed_alpha=0.5")
        alpha = float(fixed_alpha)
    elif rule == "average":
        alpha = 1.0 / task_number
    else:
        chosen = raw if rule == "closed_form" else simplified
        if chosen is None:
            warnings.warn(
                f"task {task_number}: closed-form denominator is {denominator!r}; using alpha = 1",
                AlphaFallbackWarning,
                stacklevel=2,
            )
            alpha, fallback = 1.0, True
        else:
            alpha = min(1.0, max(0.0, chosen)) if clip else chosen
    return AlphaDecision(alpha=alpha, raw=raw, simplified=simplified, fallback=fallback)


def closed_form_alpha(
    prev_merged: TensorDict,
    task_vector: TensorDict,
    fishers: Sequence[TensorDict],
    optima: Sequence[TensorDict],
    rule: str = "closed_form",
    fixed_alpha: float | None = None,
    clip: bool = True,
) -> float:
    """α_t from stored per-task Fishers and optima (i = 1..t, the current task last). Reference implementation.

    See `alpha_terms` for the formula; `RunningMergeState` computes the same from two running sums.
    """
    numerator, denominator = alpha_terms(prev_merged, task_vector, fishers, optima)
    simplified_numerator = _weighted_dot(task_vector, task_vector, fishers[-1])
    return decide_alpha(rule, numerator, denominator, simplified_numerator, len(fishers), fixed_alpha, clip).alpha


def interpolate(prev_merged: TensorDict, task_vector: TensorDict, alpha: float) -> dict[str, torch.Tensor]:
    """θ̂_t = θ̂_{t-1} + α Δ_t, key by key."""
    _check_keys(task_vector, prev_merged, "the merged model")
    return {k: prev_merged[k] + alpha * task_vector[k].to(prev_merged[k].dtype) for k in task_vector}


class RunningMergeState:
    """Constant-memory closed form: S_t = Σ_{i≤t} F_i and M_t = Σ_{i≤t} F_i ⊙ θ*_i.

        α_t* = − Σ_k Δ_k (θ̂_{t-1,k} S_{t,k} − M_{t,k}) / Σ_k S_{t,k} Δ_k²

    Two parameter-sized buffers for any number of tasks; no per-task θ*_i or F_i is kept.
    """

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        self.dtype = dtype
        self.fisher_sum: dict[str, torch.Tensor] = {}
        self.weighted_optimum_sum: dict[str, torch.Tensor] = {}
        self.num_tasks = 0

    def update(self, fisher: TensorDict, optimum: TensorDict) -> None:
        """S += F_t; M += F_t ⊙ θ*_t."""
        _check_keys(fisher, optimum, "the optimum")
        if self.fisher_sum:
            _check_keys(self.fisher_sum, fisher, "the new Fisher")
        for key, f in fisher.items():
            f = f.detach().to(self.dtype)
            weighted = f * optimum[key].detach().to(self.dtype)
            if key in self.fisher_sum:
                self.fisher_sum[key] += f
                self.weighted_optimum_sum[key] += weighted
            else:
                self.fisher_sum[key] = f.clone()
                self.weighted_optimum_sum[key] = weighted
        self.num_tasks += 1

    def alpha_terms(self, prev_merged: TensorDict, task_vector: TensorDict) -> tuple[float, float]:
        """(numerator, denominator) of α_t* from the running sums (call after `update` with task t)."""
        if not self.num_tasks:
            raise RuntimeError("RunningMergeState.update must be called with the current task first")
        _check_keys(task_vector, self.fisher_sum, "the running Fisher sum")
        numerator = torch.zeros((), dtype=torch.float64)
        denominator = torch.zeros((), dtype=torch.float64)
        for key, delta in task_vector.items():
            delta = delta.detach().to(self.dtype)
            s = self.fisher_sum[key]
            residual = prev_merged[key].detach().to(self.dtype) * s - self.weighted_optimum_sum[key]
            numerator -= (delta * residual).sum().double().cpu()
            denominator += (s * delta * delta).sum().double().cpu()
        return float(numerator), float(denominator)

    def decide(
        self,
        prev_merged: TensorDict,
        task_vector: TensorDict,
        current_fisher: TensorDict,
        rule: str = "closed_form",
        fixed_alpha: float | None = None,
    ) -> AlphaDecision:
        """α for the current task (its Fisher already added by `update`), under `rule`."""
        numerator, denominator = self.alpha_terms(prev_merged, task_vector)
        simplified_numerator = _weighted_dot(task_vector, task_vector, current_fisher)
        return decide_alpha(rule, numerator, denominator, simplified_numerator, self.num_tasks, fixed_alpha)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors: 'S.<key>' and 'M.<key>'."""
        out = {f"S.{k}": v for k, v in self.fisher_sum.items()}
        out.update({f"M.{k}": v for k, v in self.weighted_optimum_sum.items()})
        return out

    def load_state_dict(self, tensors: TensorDict, num_tasks: int) -> None:
        self.fisher_sum = {k[2:]: v.to(self.dtype) for k, v in tensors.items() if k.startswith("S.")}
        self.weighted_optimum_sum = {k[2:]: v.to(self.dtype) for k, v in tensors.items() if k.startswith("M.")}
        self.num_tasks = num_tasks
