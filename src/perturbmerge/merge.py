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


DATA_FREE_RULES = ("fixed", "average")


def data_free_alpha(rule: str, task_number: int, fixed_alpha: float) -> float:
    """α of a rule that needs no Fisher: fixed → λ (`fixed_alpha`); average → 1/t (continual model averaging)."""
    if rule == "fixed":
        return float(fixed_alpha)
    if rule == "average":
        return 1.0 / task_number
    raise ValueError(f"'{rule}' is not a data-free rule; choose one of {', '.join(DATA_FREE_RULES)}")


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


def unit_trace(fisher: TensorDict) -> dict[str, torch.Tensor]:
    """F / Σ_k F_k (fisher.normalise = trace): the same directions, total mass 1. An all-zero Fisher (a task fit
    so well that every per-example gradient underflows) stays zero: that task then has no weight in the merge."""
    total = sum(float(f.double().sum()) for f in fisher.values())
    if not math.isfinite(total) or total < 0:
        raise ValueError(f"a diagonal Fisher must have a finite, non-negative total, got {total}")
    return {k: (f.double() / total).to(f.dtype) if total > 0 else f.clone() for k, f in fisher.items()}


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

    def alpha_terms(self, prev_merged: TensorDict, task_vector: TensorDict,
                    keys: Sequence[str] | None = None) -> tuple[float, float]:
        """(numerator, denominator) of α_t* from the running sums (call after `update` with task t), summed over
        every tensor, or over `keys` only."""
        if not self.num_tasks:
            raise RuntimeError("RunningMergeState.update must be called with the current task first")
        _check_keys(task_vector, self.fisher_sum, "the running Fisher sum")
        numerator = torch.zeros((), dtype=torch.float64)
        denominator = torch.zeros((), dtype=torch.float64)
        for key in task_vector if keys is None else keys:
            delta = task_vector[key].detach().to(self.dtype)
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

    def decide_per_module(
        self,
        prev_merged: TensorDict,
        task_vector: TensorDict,
        current_fisher: TensorDict,
        rule: str = "closed_form",
    ) -> dict[str, AlphaDecision]:
        """One α per merge-space tensor k (the paper's per-module ablation): the same closed form restricted to k,

            α_{t,k}* = − Σ_{i∈k} Δ_i (θ̂_{t-1,i} S_{t,i} − M_{t,i}) / Σ_{i∈k} S_{t,i} Δ_i²,

        the argmin of the quadratic surrogate over θ̂_k = θ̂_{t-1,k} + α_k Δ_k with every other tensor fixed (the
        surrogate is a sum over tensors, so the per-tensor minima are independent)."""
        if rule not in ("closed_form", "simplified"):
            raise UserError(f"per-module alpha needs alpha_rule closed_form or simplified, not '{rule}'")
        decisions = {}
        for key in task_vector:
            numerator, denominator = self.alpha_terms(prev_merged, task_vector, [key])
            one = {key: task_vector[key]}
            simplified = _weighted_dot(one, one, {key: current_fisher[key]})
            decisions[key] = decide_alpha(rule, numerator, denominator, simplified, self.num_tasks)
        return decisions

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors: 'S.<key>' and 'M.<key>'."""
        out = {f"S.{k}": v for k, v in self.fisher_sum.items()}
        out.update({f"M.{k}": v for k, v in self.weighted_optimum_sum.items()})
        return out

    def load_state_dict(self, tensors: TensorDict, num_tasks: int) -> None:
        self.fisher_sum = {k[2:]: v.to(self.dtype) for k, v in tensors.items() if k.startswith("S.")}
        self.weighted_optimum_sum = {k[2:]: v.to(self.dtype) for k, v in tensors.items() if k.startswith("M.")}
        self.num_tasks = num_tasks


# ---- baseline merge rules (issue: baselines under one protocol) -------------------------------------------
# Pure functions over dicts of tensors keyed like the task vectors; τ_i = θ_i − θ_0 (w.r.t. the pretrained weights).


def add_scaled(base: TensorDict, update: TensorDict, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """θ_0 + scale · u, key by key (the shared last step of every task-vector merge)."""
    _check_keys(update, base, "base weights")
    return {k: base[k] + scale * update[k].to(base[k].dtype) for k in update}


def running_mean(previous_mean: TensorDict | None, new: TensorDict, count: int) -> dict[str, torch.Tensor]:
    """Exact running mean after `count` items: m_t = m_{t-1} + (x_t − m_{t-1}) / t  (model averaging, α_t = 1/t)."""
    if count < 1:
        raise ValueError("count must be >= 1")
    if previous_mean is None:
        if count != 1:
            raise ValueError("the first item of a running mean has count 1")
        return {k: v.clone() for k, v in new.items()}
    _check_keys(new, previous_mean, "previous mean")
    return {k: previous_mean[k] + (new[k] - previous_mean[k]) / count for k in new}


def task_arithmetic(task_vectors: Sequence[TensorDict]) -> dict[str, torch.Tensor]:
    """Σ_i τ_i (Ilharco et al., 2023); the merged model is θ_0 + λ Σ_i τ_i via `add_scaled`."""
    first = task_vectors[0]
    for tv in task_vectors[1:]:
        _check_keys(first, tv, "task vector")
    return {k: torch.stack([tv[k] for tv in task_vectors]).sum(0) for k in first}


def magmax(task_vectors: Sequence[TensorDict]) -> dict[str, torch.Tensor]:
    """Per element, the τ_i of largest magnitude; ties go to the later task (MagMax, Marczak et al., ECCV 2024)."""
    merged = {}
    for k in task_vectors[0]:
        stacked = torch.stack([tv[k] for tv in task_vectors])  # [T, ...]
        magnitude = stacked.abs()
        # argmax returns the first maximum; flip the task axis so the last maximum (later task) wins
        last_best = magnitude.size(0) - 1 - magnitude.flip(0).argmax(0)
        merged[k] = stacked.gather(0, last_best.unsqueeze(0)).squeeze(0)
    return merged


def ties(task_vectors: Sequence[TensorDict], keep_fraction: float = 0.2) -> dict[str, torch.Tensor]:
    """TIES-merging (Yadav et al., 2023): per task vector keep the top `keep_fraction` of entries by magnitude
    (over all its keys together), elect each entry's sign as the sign of the sum of trimmed values, and average
    the trimmed values that agree with the elected sign (zeros excluded). Returns the merged vector (λ outside)."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError("keep_fraction must be in (0, 1]")
    keys = list(task_vectors[0])
    trimmed = []
    for tv in task_vectors:
        flat = torch.cat([tv[k].reshape(-1) for k in keys])
        keep = max(1, int(math.ceil(keep_fraction * flat.numel())))
        threshold = flat.abs().kthvalue(flat.numel() - keep + 1).values
        trimmed.append({k: torch.where(tv[k].abs() >= threshold, tv[k], torch.zeros_like(tv[k])) for k in keys})
    merged = {}
    for k in keys:
        stacked = torch.stack([t[k] for t in trimmed])
        elected = torch.sign(stacked.sum(0))
        agree = (torch.sign(stacked) == elected) & (stacked != 0)
        count = agree.sum(0)
        merged[k] = torch.where(count > 0, (stacked * agree).sum(0) / count.clamp(min=1), torch.zeros_like(stacked[0]))
    return merged


def dare(task_vector: TensorDict, drop_probability: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """DARE (Yu et al., 2024): drop each entry with probability p, rescale survivors by 1/(1 − p); E[output] = τ."""
    if not 0.0 <= drop_probability < 1.0:
        raise ValueError("drop_probability must be in [0, 1)")
    out = {}
    for k, v in task_vector.items():
        keep = torch.rand(v.shape, generator=generator, device="cpu").to(v.device) >= drop_probability
        out[k] = torch.where(keep, v / (1.0 - drop_probability), torch.zeros_like(v))
    return out


def fisher_weighted_interpolation(previous: TensorDict, current: TensorDict, fisher_previous: TensorDict,
                                  fisher_current: TensorDict, epsilon: float = 1e-12) -> dict[str, torch.Tensor]:
    """CoFiMA (Marouf et al., 2024): θ = (F_prev ⊙ θ_prev + F_cur ⊙ θ_cur) / (F_prev + F_cur), element-wise;
    where both Fishers vanish the plain mean is used."""
    _check_keys(current, previous, "previous weights")
    merged = {}
    for k in current:
        fp, fc = fisher_previous[k].to(current[k].dtype), fisher_current[k].to(current[k].dtype)
        total = fp + fc
        weighted = (fp * previous[k] + fc * current[k]) / total.clamp(min=epsilon)
        merged[k] = torch.where(total > epsilon, weighted, 0.5 * (previous[k] + current[k]))
    return merged


def ewc_penalty(parameters: TensorDict, anchors: TensorDict, fisher: TensorDict, strength: float) -> torch.Tensor:
    """EWC (Kirkpatrick et al., 2017): (λ/2) Σ F ⊙ (θ − θ*)²; its gradient is λ F ⊙ (θ − θ*)."""
    _check_keys(parameters, anchors, "anchors")
    total = sum(((fisher[k] * (parameters[k] - anchors[k]) ** 2).sum() for k in parameters),
                torch.zeros((), dtype=next(iter(parameters.values())).dtype))
    return 0.5 * strength * total
