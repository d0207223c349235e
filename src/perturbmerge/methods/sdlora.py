"""SD-LoRA (Wu et al., ICLR 2025): each finished task's LoRA update is kept as a fixed unit-norm direction whose
magnitude keeps training in later tasks, while a fresh LoRA learns the new task's direction.

Per adapted matrix W, during task t:

    W = W_0 + Σ_{i<t} α_i D_i + s B_t A_t,     D_i = s B_i A_i / ‖s B_i A_i‖_F  (fixed),  α_i trainable

Here the learned magnitudes are folded into the backbone after each task, so training continues from
Ŵ_{t−1} = W_0 + Σ_{i<t} α_i^{(t−1)} D_i with an offset δα_i (initialised at 0, one per adapted matrix and earlier
task) — the same function and the same Adam updates for α as the paper's parametrisation. The new direction's
magnitude is carried by B_t A_t itself (its norm); after the task, W ← Ŵ_{t−1} + Σ δα_i D_i + s B_t A_t, and
D_t = s B_t A_t / ‖s B_t A_t‖_F joins the stored directions (as the rank-r factors, not a dense matrix).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..adaptation import ADAPTER
from .task_vector import TaskVectorMethod

if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext


def direction_output(x: torch.Tensor, directions: list[tuple[torch.Tensor, torch.Tensor]],
                     magnitudes: torch.Tensor, conv: torch.nn.Conv2d | None = None) -> torch.Tensor:
    """Σ_i δα_i D_i x for directions D_i = up_i @ down_i [d_out, d_in], computed through the rank-r factors; for a
    Conv2d layer (`conv`: its base layer) down_i is its kernel flattened to [r, C·k·k], applied as a convolution."""
    out = 0
    for (up, down), magnitude in zip(directions, magnitudes):
        if conv is None:
            reduced = x @ down.T.to(x)
            out = out + magnitude * (reduced @ up.T.to(x))
        else:
            kernel = down.reshape(down.shape[0], conv.in_channels, *conv.kernel_size).to(x)
            reduced = torch.nn.functional.conv2d(x, kernel, None, conv.stride, conv.padding, conv.dilation)
            out = out + magnitude * torch.einsum("nrhw,or->nohw", reduced, up.to(x))
    return out


def dense_directions(directions: list[tuple[torch.Tensor, torch.Tensor]], magnitudes: torch.Tensor) -> torch.Tensor:
    """Σ_i δα_i up_i @ down_i as a dense [d_out, d_in] matrix (float64)."""
    return sum(float(m) * (up.double() @ down.double()) for (up, down), m in zip(directions, magnitudes))


class SdLoraMethod(TaskVectorMethod):
    """Sequential LoRA with the earlier tasks' directions kept and their magnitudes learned."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.directions: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.magnitudes: dict[str, torch.nn.Parameter] = {}
        self._hooks: list[Any] = []

    def prepare_adapter(self, context: "TaskContext", task: "Task") -> list[torch.nn.Parameter]:
        self.magnitudes = {}
        for key, layer in self.adaptation.layers.items():
            if not self.directions.get(key):
                continue
            device = layer.get_base_layer().weight.device
            self.magnitudes[key] = torch.nn.Parameter(torch.zeros(len(self.directions[key]), device=device))
            self.directions[key] = [(up.to(device), down.to(device)) for up, down in self.directions[key]]
            self._hooks.append(layer.register_forward_hook(self._adds_directions(key)))
        return list(self.magnitudes.values())

    def _adds_directions(self, key: str):
        def hook(module, args, output):
            base = module.get_base_layer()
            conv = base if isinstance(base, torch.nn.Conv2d) else None
            return output + direction_output(args[0], self.directions[key], self.magnitudes[key], conv)
        return hook

    def fold_adapter(self, context: "TaskContext", alpha) -> torch.nn.Module:
        """Store D_t, fold s B_t A_t (with α) and Σ δα_i D_i into the backbone, drop the hooks."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        new_directions = {}
        with torch.no_grad():
            for key, layer in self.adaptation.layers.items():
                down = layer.lora_A[ADAPTER].weight.detach().flatten(1).clone()  # [r, d_in] (a kernel: C·k·k)
                up = layer.lora_B[ADAPTER].weight.detach().flatten(1) * layer.scaling[ADAPTER]  # [d_out, r]
                norm = float((up.double() @ down.double()).norm())
                new_directions[key] = (up / norm, down) if norm > 0 else None
        backbone = super().fold_adapter(context, alpha)
        with torch.no_grad():
            for key, magnitudes in self.magnitudes.items():
                weight = backbone.get_parameter(key)
                weight += dense_directions(self.directions[key], magnitudes.detach()).reshape(weight.shape).to(weight)
        for key, direction in new_directions.items():
            if direction is not None:
                self.directions.setdefault(key, []).append(direction)
        self.magnitudes = {}
        return backbone

    def end_task(self, context: "TaskContext", task: "Task") -> dict[str, Any]:
        magnitudes = {key: m.detach().tolist() for key, m in self.magnitudes.items()}
        log = super().end_task(context, task)
        if magnitudes:
            log["magnitude_offsets"] = magnitudes
        return log

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "sdlora_directions": {k: [list(pair) for pair in v] for k, v in self.directions.items()},
                "sdlora_magnitudes": {k: m.detach().clone() for k, m in self.magnitudes.items()}}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Inside a task, `begin_task` ran before the directions were known: the magnitudes join the optimiser's
        first group now, in the order they had when the checkpoint was taken, before its state is loaded."""
        self.directions = {k: [(up.to(device), down.to(device)) for up, down in v]
                           for k, v in state["sdlora_directions"].items()}
        if self.adaptation is not None and not self.magnitudes and state["sdlora_magnitudes"]:
            self.optimizer.param_groups[0]["params"].extend(self.prepare_adapter(None, None))
        with torch.no_grad():
            for key, values in state["sdlora_magnitudes"].items():
                self.magnitudes[key].copy_(values.to(device))
        super().load_state_dict(state, device)
