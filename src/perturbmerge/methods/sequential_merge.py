"""Deployed task merging: sequential LoRA training (each adapter folded in with α = 1, training goes on from there),
while the deployed model merges task vectors w.r.t. the pretrained weights θ_0:

    magmax: θ_0 + λ · MagMax(τ_1..τ_t),  τ_i = θ_i − θ_0 (cumulative, as in MagMax)
    ties:   θ_0 + λ · TIES(δ_1..δ_t),    δ_i = θ_i − θ_{i−1} (each task's own update)
    dare:   θ_0 + λ · Σ_i DARE(δ_i)      (masks drawn once per task; with p = 0, λ = 1 this is θ_t)

The head acts on the deployed model (evaluation swaps its weights in).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..config import RunConfig
from ..merge import add_scaled, dare, magmax, task_arithmetic, ties
from ..streams import generator
from .base import sum_norm_sq
from .merger import SequentialFold
from .perturbation import Perturbation
from .task_vector import TaskVectorMethod

if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext


class SequentialMergeMethod(TaskVectorMethod):
    def __init__(self, name: str, config: RunConfig, lora_targets: list[str], rule: str) -> None:
        super().__init__(name, config, "lora", Perturbation("none", config.epsilon, config.p0, config.seed),
                         SequentialFold(), lora_targets)
        self.rule = rule
        self.pretrained: dict[str, torch.Tensor] | None = None
        self.vectors: list[dict[str, torch.Tensor]] = []  # τ_i (magmax) or δ_i / DARE(δ_i) (ties, dare)
        self.cumulative: dict[str, torch.Tensor] | None = None
        self.deployed: dict[str, torch.Tensor] | None = None
        self.dare_generator = generator(config.seed, "dare_masks")

    def end_task(self, context: "TaskContext", task: "Task") -> dict[str, Any]:
        c = self.config.task_merge
        delta = {k: v.double().cpu() for k, v in self.adaptation.task_vector().items()}
        if self.pretrained is None:
            self.pretrained = {k: v.double().cpu().clone() for k, v in self.adaptation.merged_weights().items()}
        log: dict[str, Any] = {"task_vector_norm": sum_norm_sq(delta) ** 0.5}
        self.fold_adapter(context, 1.0)
        self.cumulative = delta if self.cumulative is None else {k: self.cumulative[k] + delta[k] for k in delta}
        if self.rule == "magmax":
            self.vectors.append(self.cumulative)
            merged = magmax(self.vectors)
        elif self.rule == "ties":
            self.vectors.append(delta)
            merged = ties(self.vectors, c.keep)
        else:
            self.vectors.append(dare(delta, c.drop, self.dare_generator))
            merged = task_arithmetic(self.vectors)
        deployed = add_scaled(self.pretrained, merged, c.lam)
        device_params = dict(context.model.backbone.named_parameters())
        self.deployed = {k: v.to(device_params[k].dtype) for k, v in deployed.items()}
        log["deployed_distance"] = sum_norm_sq({k: deployed[k] - self.pretrained[k] - self.cumulative[k]
                                                for k in deployed}) ** 0.5  # ‖deployed − sequential model‖
        if self.uses_head and self.head.acts_after_fold:
            with context.deployed_weights():
                log.update(self.head.finish_task(context, task))
        return log

    def deployed_weights(self) -> dict[str, torch.Tensor] | None:
        return self.deployed

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pretrained": self.pretrained, "vectors": self.vectors,
                "cumulative": self.cumulative, "deployed": self.deployed, "dare": self.dare_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        super().load_state_dict(state, device)
        self.pretrained, self.vectors = state["pretrained"], list(state["vectors"])
        self.cumulative, self.deployed = state["cumulative"], state["deployed"]
        self.dare_generator.set_state(state["dare"])
