"""The merger part: after task t, the coefficient α_t with which the task's update Δ_t is folded in,
θ̂_t = θ̂_{t−1} + α_t Δ_t (pm-method.md §1).

    ClosedFormMerger   α_t* from the task Fishers, constant memory (S_t = Σ F_i, M_t = Σ F_i ⊙ θ*_i):
                       alpha_rule closed_form | simplified; alpha_granularity model | module; anchor_pretrained
                       (θ_0 as task 0); fisher.normalise none | trace
    DataFreeMerger     average (α_t = 1/t) or fixed (α_t = λ, `fixed_alpha`): no Fisher pass
    SequentialFold     α_t = 1: sequential fine-tuning
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from ..config import RunConfig
from ..merge import RunningMergeState, data_free_alpha, unit_trace
from . import task_fisher as task_fisher_part
from .base import to_device, total

if TYPE_CHECKING:
    from ..data import Task
    from ..learner import ContinualLearner

CLOSED_FORM_KEYS = frozenset({"alpha_rule", "fixed_alpha", "alpha_granularity", "anchor_pretrained",
                              "fisher.normalise"}) | task_fisher_part.KEYS
Alpha = float | dict[str, float]


class SequentialFold:
    """α_t = 1 (no merge); keeps an empty merge state so every task-vector method's checkpoint has one layout."""

    merges = False
    keys: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.state = RunningMergeState()

    def decide(self, adaptation, learner: "ContinualLearner", task: "Task",
               task_vector: dict[str, torch.Tensor]) -> tuple[Alpha, dict[str, Any]]:
        return 1.0, {}

    def state_dict(self) -> dict[str, Any]:
        return {"fisher_sum": self.state.fisher_sum, "weighted_optimum_sum": self.state.weighted_optimum_sum,
                "num_tasks": self.state.num_tasks}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.state.fisher_sum = to_device(state["fisher_sum"], device)
        self.state.weighted_optimum_sum = to_device(state["weighted_optimum_sum"], device)
        self.state.num_tasks = state["num_tasks"]


class DataFreeMerger(SequentialFold):
    """average: α_t = 1/t; fixed: α_t = λ."""

    merges = True

    def __init__(self, rule: str, fixed_alpha: float) -> None:
        super().__init__()
        self.rule, self.fixed_alpha = rule, fixed_alpha
        self.keys = frozenset({"fixed_alpha"}) if rule == "fixed" else frozenset()

    def decide(self, adaptation, learner, task, task_vector):
        alpha = data_free_alpha(self.rule, task.index + 1, self.fixed_alpha)
        return alpha, {"alpha": alpha, "alpha_raw": None, "alpha_simplified": None, "alpha_fallback": False}


class ClosedFormMerger(SequentialFold):
    """α_t* = − Σ_k Δ_k (θ̂_{t−1,k} S_{t,k} − M_{t,k}) / Σ_k S_{t,k} Δ_k² (clipped to [0, 1]); per adapted matrix
    with alpha_granularity = module (the log's alpha is then their mean)."""

    merges = True
    keys = CLOSED_FORM_KEYS

    def __init__(self, config: RunConfig) -> None:
        super().__init__()
        self.config = config

    def decide(self, adaptation, learner, task, task_vector):
        c = self.config
        log: dict[str, Any] = {}
        previous = adaptation.merged_weights()
        normalised = unit_trace if c.fisher.normalise == "trace" else (lambda f: f)
        if c.anchor_pretrained and self.state.num_tasks == 0:  # task 0: θ_0, with this task's Fisher at θ_0
            with adaptation.at_start():
                pretrained_fisher = task_fisher_part.task_fisher(adaptation, learner, task, c.fisher, c.seed)
            self.state.update(normalised(pretrained_fisher), previous)
            log["pretrained_fisher_mass"] = total(pretrained_fisher)
        fisher_started = time.perf_counter()
        raw_fisher = task_fisher_part.task_fisher(adaptation, learner, task, c.fisher, c.seed)
        log["fisher_s"] = time.perf_counter() - fisher_started
        fisher = normalised(raw_fisher)
        dtype = self.state.dtype  # θ*_t = θ̂_{t-1} + Δ_t formed in the sums' precision (α_1 = 1 exactly)
        optimum = {k: previous[k].to(dtype) + task_vector[k].to(dtype) for k in task_vector}
        self.state.update(fisher, optimum)
        decision = self.state.decide(previous, task_vector, fisher, c.alpha_rule, c.fixed_alpha)
        alpha: Alpha = decision.alpha
        log.update(alpha=alpha, alpha_raw=decision.raw, alpha_simplified=decision.simplified,
                   alpha_fallback=decision.fallback, fisher_mass=total(raw_fisher))
        if c.alpha_granularity == "module":
            per_module = self.state.decide_per_module(previous, task_vector, fisher, c.alpha_rule)
            alpha = {k: d.alpha for k, d in per_module.items()}
            log.update(alpha=sum(alpha.values()) / len(alpha), alpha_model_level=decision.alpha,
                       alpha_per_module=alpha)
        return alpha, log
