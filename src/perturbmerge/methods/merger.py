"""The merger part: after task t, the coefficient α_t with which the task's update Δ_t is folded in,
θ̂_t = θ̂_{t−1} + α_t Δ_t (pm-method.md §1).

    ClosedFormMerger   α_t* from the task Fishers, constant memory (S_t = Σ F_i, M_t = Σ F_i ⊙ θ*_i):
                       alpha_rule closed_form | simplified; alpha_granularity model | module; anchor_pretrained
                       (θ_0 as task 0); fisher.normalise none | trace
    DataFreeMerger     average (α_t = 1/t) or fixed (α_t = λ, `fixed_alpha`): no Fisher pass
    SequentialFold     α_t = 1: sequential fine-tuning

`closed_form_decision` and `data_free_decision` are the end-of-task sequence up to the fold; the learner's mergers
and `PerturbAndMerge` (api.py) both call them. `MERGERS` resolves a recipe's merger by name.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..config import AlphaGranularity, AlphaRule, FisherNormalisation, RunConfig
from ..merge import RunningMergeState, TensorDict, data_free_alpha, unit_trace
from . import task_fisher as task_fisher_part
from .base import to_device, total

if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext

CLOSED_FORM_KEYS = frozenset({"alpha_rule", "fixed_alpha", "alpha_granularity", "anchor_pretrained",
                              "fisher.normalise"}) | task_fisher_part.KEYS
Alpha = float | dict[str, float]


class SequentialFold:
    """α_t = 1 (no merge); keeps an empty merge state so every task-vector method's checkpoint has one layout."""

    merges = False
    keys: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.state = RunningMergeState()

    def decide(self, adaptation, context: "TaskContext", task: "Task",
               task_vector: dict[str, torch.Tensor]) -> tuple[Alpha, dict[str, Any]]:
        return 1.0, {}

    def state_dict(self) -> dict[str, Any]:
        return {"fisher_sum": self.state.fisher_sum, "weighted_optimum_sum": self.state.weighted_optimum_sum,
                "num_tasks": self.state.num_tasks}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.state.fisher_sum = to_device(state["fisher_sum"], device)
        self.state.weighted_optimum_sum = to_device(state["weighted_optimum_sum"], device)
        self.state.num_tasks = state["num_tasks"]


@dataclass(frozen=True)
class MergeOptions:
    """How α_t is decided; the config keys alpha_rule, fixed_alpha, alpha_granularity, anchor_pretrained and
    fisher.normalise, and `PerturbAndMerge`'s arguments of the same names."""

    rule: AlphaRule = "closed_form"
    fixed_alpha: float = 0.5
    granularity: AlphaGranularity = "model"
    anchor_pretrained: bool = False
    normalise: FisherNormalisation = "none"

    @classmethod
    def from_config(cls, config: RunConfig) -> "MergeOptions":
        return cls(config.alpha_rule, config.fixed_alpha, config.alpha_granularity, config.anchor_pretrained,
                   config.fisher.normalise)


def closed_form_decision(state: RunningMergeState, previous: TensorDict, task_vector: TensorDict,
                         fisher_at: Callable[[bool], TensorDict], options: MergeOptions) -> tuple[Alpha, dict[str, Any]]:
    """The end of a task up to the fold, for the CLI's learner and `PerturbAndMerge` alike (pm-method.md §1):

        (anchor_pretrained, first task: S, M += F(θ_0), θ_0)  →  F_t = fisher_at(False), at θ*_t  →  normalise
        →  θ*_t = θ̂_{t−1} + Δ_t  →  S_t, M_t += F_t, F_t ⊙ θ*_t  →  α_t (per module with granularity = module)

    `fisher_at(at_start)` computes the task's Fisher at the trained weights, or (True) at the task's start θ̂_{t−1}.
    Returns α (a float, or one per adapted matrix) and the task record's merge entries."""
    log: dict[str, Any] = {}
    normalised = unit_trace if options.normalise == "trace" else (lambda f: f)
    if options.anchor_pretrained and state.num_tasks == 0:  # task 0: θ_0, with this task's Fisher at θ_0
        pretrained_fisher = fisher_at(True)
        state.update(normalised(pretrained_fisher), previous)
        log["pretrained_fisher_mass"] = total(pretrained_fisher)
    fisher_started = time.perf_counter()
    raw_fisher = fisher_at(False)
    log["fisher_s"] = time.perf_counter() - fisher_started
    fisher = normalised(raw_fisher)
    dtype = state.dtype  # θ*_t = θ̂_{t-1} + Δ_t formed in the sums' precision (α_1 = 1 exactly)
    optimum = {k: previous[k].to(dtype) + task_vector[k].to(dtype) for k in task_vector}
    state.update(fisher, optimum)
    decision = state.decide(previous, task_vector, fisher, options.rule, options.fixed_alpha)
    alpha: Alpha = decision.alpha
    log.update(alpha=alpha, alpha_raw=decision.raw, alpha_simplified=decision.simplified,
               alpha_fallback=decision.fallback, fisher_mass=total(raw_fisher))
    if options.granularity == "module":
        per_module = state.decide_per_module(previous, task_vector, fisher, options.rule)
        alpha = {k: d.alpha for k, d in per_module.items()}
        log.update(alpha=sum(alpha.values()) / len(alpha), alpha_model_level=decision.alpha,
                   alpha_per_module=alpha)
    return alpha, log


def data_free_decision(rule: str, task_number: int, fixed_alpha: float) -> tuple[float, dict[str, Any]]:
    """α_t of a rule that needs no Fisher (average: 1/t; fixed: λ), with the task record's merge entries."""
    alpha = data_free_alpha(rule, task_number, fixed_alpha)
    return alpha, {"alpha": alpha, "alpha_raw": None, "alpha_simplified": None, "alpha_fallback": False}


class DataFreeMerger(SequentialFold):
    """average: α_t = 1/t; fixed: α_t = λ."""

    merges = True

    def __init__(self, rule: str, fixed_alpha: float) -> None:
        super().__init__()
        self.rule, self.fixed_alpha = rule, fixed_alpha
        self.keys = frozenset({"fixed_alpha"}) if rule == "fixed" else frozenset()

    def decide(self, adaptation, context, task, task_vector):
        return data_free_decision(self.rule, task.index + 1, self.fixed_alpha)


class ClosedFormMerger(SequentialFold):
    """α_t* = − Σ_k Δ_k (θ̂_{t−1,k} S_{t,k} − M_{t,k}) / Σ_k S_{t,k} Δ_k² (clipped to [0, 1]); per adapted matrix
    with alpha_granularity = module (the log's alpha is then their mean)."""

    merges = True
    keys = CLOSED_FORM_KEYS

    def __init__(self, config: RunConfig) -> None:
        super().__init__()
        self.config = config
        self.options = MergeOptions.from_config(config)

    def decide(self, adaptation, context, task, task_vector):
        def fisher_at(at_start: bool) -> TensorDict:
            if not at_start:
                return task_fisher_part.task_fisher(adaptation, context, task, self.config.fisher)
            with adaptation.at_start():
                return task_fisher_part.task_fisher(adaptation, context, task, self.config.fisher)

        return closed_form_decision(self.state, adaptation.merged_weights(), task_vector, fisher_at, self.options)


MERGERS: dict[str, Callable[[RunConfig], SequentialFold]] = {
    "closed_form": ClosedFormMerger,
    "average": lambda config: DataFreeMerger("average", config.fixed_alpha),
    "fixed": lambda config: DataFreeMerger("fixed", config.fixed_alpha),
    "sequential": lambda config: SequentialFold(),
}
