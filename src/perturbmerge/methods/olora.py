"""O-LoRA (Wang et al., EMNLP Findings 2023): each task learns a fresh LoRA whose down-projection is pushed to be
orthogonal to every earlier task's; the earlier adapters stay frozen (here: folded into the backbone, the same
function, since they no longer change).

    L = L_task + λ₁ Σ_{i<t} Σ_layers ‖A_i A_tᵀ‖²_F + λ₂ Σ_{θ ∈ {A_t, B_t}} ‖θ‖₂

A_i [r, d_in] is PEFT's lora_A of task i (its rows span the input subspace the task's update reads from);
λ₁ = continual_lora.olora_orthogonal (the paper: 0.5), λ₂ = continual_lora.olora_l2 (the paper: 0).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..adaptation import ADAPTER
from .base import to_device
from .task_vector import TaskVectorMethod

if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext


def squared_overlap(down: torch.Tensor, earlier: list[torch.Tensor]) -> torch.Tensor:
    """Σ_i ‖A_i A_tᵀ‖²_F of a down-projection A_t [r, d_in] against the stored A_i."""
    return sum((old.to(down) @ down.T).pow(2).sum() for old in earlier)


class OrthogonalSubspacePenalty:
    """The regulariser part of O-LoRA: the earlier tasks' down-projections and the penalty on the current one's."""

    def __init__(self, orthogonal: float, l2: float) -> None:
        self.orthogonal, self.l2 = orthogonal, l2
        self.earlier: dict[str, list[torch.Tensor]] = {}  # adapted matrix -> [A_1, ..., A_{t-1}]

    def penalty(self, adaptation) -> torch.Tensor | None:
        terms = []
        for key, layer in adaptation.layers.items():
            down = layer.lora_A[ADAPTER].weight.flatten(1)  # [r, d_in] (a Conv2d kernel: [r, C·k·k])
            if self.orthogonal and self.earlier.get(key):
                terms.append(self.orthogonal * squared_overlap(down, self.earlier[key]))
            if self.l2:
                terms.append(self.l2 * (down.norm() + layer.lora_B[ADAPTER].weight.norm()))
        return torch.stack(terms).sum() if terms else None

    def add_task(self, adaptation) -> None:
        for key, layer in adaptation.layers.items():
            self.earlier.setdefault(key, []).append(layer.lora_A[ADAPTER].weight.detach().flatten(1).clone())

    def overlap(self, adaptation) -> float:
        """Σ ‖A_i A_tᵀ‖²_F of the current adapter against the stored ones (logged per task)."""
        with torch.no_grad():
            return float(sum(squared_overlap(layer.lora_A[ADAPTER].weight.flatten(1), self.earlier.get(key, []))
                             for key, layer in adaptation.layers.items()))


class OLoraMethod(TaskVectorMethod):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        settings = self.config.continual_lora
        self.regulariser = OrthogonalSubspacePenalty(settings.olora_orthogonal, settings.olora_l2)

    def end_task(self, context: "TaskContext", task: "Task") -> dict[str, Any]:
        overlap = self.regulariser.overlap(self.adaptation)
        self.regulariser.add_task(self.adaptation)
        return {"subspace_overlap": overlap, **super().end_task(context, task)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "olora_earlier": {k: list(v) for k, v in self.regulariser.earlier.items()}}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        super().load_state_dict(state, device)
        self.regulariser.earlier = {k: list(to_device(dict(enumerate(v)), device).values())
                                    for k, v in state["olora_earlier"].items()}
