"""Sequential LoRA (or full fine-tuning) whose fold-in is Fisher-weighted per element instead of a scalar α.

    cofima (CoFiMA, Marouf et al., 2024): θ̂_t = (S_{t−1} ⊙ θ̂_{t−1} + F_t ⊙ θ*_t) / (S_{t−1} + F_t), S_t = Σ_{i≤t} F_i
        (θ̂_1 = θ*_1; where S_{t−1} + F_t = 0 the plain mean).
    ewc-lora / ewc-full (online EWC): θ̂_t = θ*_t; training adds the EWC penalty (regulariser.py) with S_{t−1}.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..config import RunConfig
from ..merge import fisher_weighted_interpolation
from .base import sum_norm_sq, total
from .merger import SequentialFold
from .perturbation import Perturbation
from .regulariser import EwcPenalty, FisherSum
from .task_fisher import task_fisher
from .task_vector import TaskVectorMethod

if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext


class FisherWeightedMethod(TaskVectorMethod):
    def __init__(self, name: str, config: RunConfig, lora_targets: list[str], rule: str,
                 adaptation: str = "lora") -> None:
        self.fishers = EwcPenalty(config.ewc_lambda) if rule == "ewc" else FisherSum()
        super().__init__(name, config, adaptation, Perturbation("none", config.epsilon, config.p0, config.seed),
                         SequentialFold(), lora_targets, regulariser=self.fishers if rule == "ewc" else None)
        self.rule = rule
        self.divergence_hint = " or ewc_lambda" if rule == "ewc" else ""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.fishers.state_dict()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        super().load_state_dict(state, device)
        self.fishers.load_state_dict(state, device)

    computes_fisher = True

    def end_task(self, context: "TaskContext", task: "Task") -> dict[str, Any]:
        task_vector = {k: v.double() for k, v in self.adaptation.task_vector().items()}
        previous = {k: v.double().clone() for k, v in self.adaptation.merged_weights().items()}
        fisher = {k: v.double() for k, v in task_fisher(self.adaptation, context, task, self.config.fisher).items()}
        optimum = {k: previous[k] + task_vector[k] for k in task_vector}
        log: dict[str, Any] = {"task_vector_norm": sum_norm_sq(task_vector) ** 0.5, "fisher_mass": total(fisher)}
        if self.rule == "cofima" and self.fishers.fisher_sum is not None:
            merged = fisher_weighted_interpolation(previous, optimum, self.fishers.fisher_sum, fisher)
        else:
            merged = optimum
        self.fishers.add_task_fisher(fisher)
        params = dict(self.fold_adapter(context, 1.0).named_parameters())
        with torch.no_grad():
            for k, value in merged.items():
                params[k].copy_(value.to(params[k].dtype))
        log["kept_fraction_of_update"] = (
            total({k: (merged[k] - previous[k]) * task_vector[k] for k in merged})
            / max(sum_norm_sq(task_vector), 1e-300))  # 1 = whole task vector, 0 = none (projection)
        if self.uses_head:
            log.update(self.head.finish_task(context, task))
        return log
