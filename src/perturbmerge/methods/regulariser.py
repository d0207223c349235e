"""The regulariser part: a penalty added to the training loss, updated after each task.

Online EWC (Kirkpatrick et al., 2017): (λ/2) Σ S_{t−1} ⊙ Δ², with S_{t−1} = Σ_{i<t} F_i the summed task Fishers and
Δ the task's update (the adapter's ΔW for LoRA, every backbone parameter for full fine-tuning) — the penalty
(λ/2) Σ F ⊙ (θ − θ*)² with θ* the weights before the task.
"""
from __future__ import annotations

from typing import Any

import torch

from ..merge import ewc_penalty
from .base import to_device

KEYS = frozenset({"ewc_lambda"})


class FisherSum:
    """S_t = Σ_{i≤t} F_i, the task Fishers summed (float64), for a penalty or an element-wise merge."""

    def __init__(self) -> None:
        self.fisher_sum: dict[str, torch.Tensor] | None = None

    def add_task_fisher(self, fisher: dict[str, torch.Tensor]) -> None:
        self.fisher_sum = fisher if self.fisher_sum is None else {k: self.fisher_sum[k] + fisher[k] for k in fisher}

    def state_dict(self) -> dict[str, Any]:
        return {"fisher_sum": self.fisher_sum}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.fisher_sum = to_device(state["fisher_sum"], device)


class EwcPenalty(FisherSum):
    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = strength

    def penalty(self, adaptation) -> torch.Tensor | None:
        """The penalty on the current update, or None before the first task ends (or with λ = 0)."""
        if self.fisher_sum is None or self.strength == 0:
            return None
        deltas = adaptation.differentiable_task_vector()
        return ewc_penalty(deltas, {k: torch.zeros_like(v) for k, v in deltas.items()},
                           {k: self.fisher_sum[k].to(deltas[k]) for k in deltas}, self.strength)
