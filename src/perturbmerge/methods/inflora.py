"""InfLoRA (Liang & Li, CVPR 2024): each task's LoRA down-projection is designed, not learned, so that the task's
update cannot interfere with what the earlier tasks' inputs span; only the up-projection trains.

Per adapted matrix W [d_out, d_in] with layer inputs x ∈ R^{d_in}:

    C_t = Σ_x x xᵀ                       the layer-input moment on task t's data (float64), before training
    M    [d_in, k]                       orthonormal memory of the earlier tasks' input subspace (GPM)
    Q    [d_in, d_in − k]                an orthonormal basis of its complement
    A_t = (Q V_r)ᵀ,  V_r = the top-r eigenvectors of Qᵀ C_t Q       (PEFT's lora_A, frozen)
    ΔW_t = s B_t A_t  ⇒  ΔW_t M = 0: the update leaves the layer's output on the earlier inputs' subspace unchanged

After the task (on the merged backbone) the memory grows by GPM's rule: with the task's moment C_t, add the top
eigenvectors of (I − MMᵀ) C_t (I − MMᵀ) until ‖proj_M‖² + their energy ≥ ε_t · tr C_t, where ε_t rises linearly
from continual_lora.inflora_threshold at the first task to 1.0 at the last (the paper's DualGPM schedule), and k stays
≤ d_in − r so that a next task keeps room for its r directions. Inputs are taken at every token position; for a
Conv2d, x is an unfolded C·k·k input patch and W the kernel flattened to [d_out, C·k·k].
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..adaptation import ADAPTER
from ..errors import UserError
from .task_vector import TaskVectorMethod

if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext


def layer_input_rows(module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The vectors the flattened weight W [d_out, d_in] multiplies: rows of the input for a linear layer (every token),
    the unfolded C·k·k patches for a Conv2d (so that conv(x) = patches Wᵀ)."""
    if isinstance(module, torch.nn.Conv2d):
        if module.groups != 1 or isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise UserError(f"inflora supports Linear layers and plain Conv2d (groups 1, numeric zero padding); "
                            f"this one has groups={module.groups}, padding={module.padding!r}: choose other "
                            f"lora.targets")
        patches = torch.nn.functional.unfold(inputs, module.kernel_size, module.dilation, module.padding,
                                             module.stride)  # [N, C·k·k, L]
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return inputs.reshape(-1, inputs.shape[-1])


@torch.no_grad()
def layer_input_moments(context: "TaskContext", task: "Task", modules: dict[str, torch.nn.Module]
                        ) -> dict[str, torch.Tensor]:
    """Σ x xᵀ (float64, [d_in, d_in]) of the inputs each module receives on the task's training data (eval mode)."""
    moments: dict[str, torch.Tensor] = {}

    def hook(key):
        def add(module, args):
            inputs = layer_input_rows(module, args[0].detach()).double()
            moments[key] = moments.get(key, 0) + inputs.T @ inputs
        return add

    handles = [module.register_forward_pre_hook(hook(key)) for key, module in modules.items()]
    context.model.eval()
    try:
        for inputs, _ in context.batches(task.train, context.eval_batch_size):
            context.model.backbone(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {key: context.summed(moment.cpu()) for key, moment in moments.items()}


def complement_basis(memory: torch.Tensor | None, dim: int) -> torch.Tensor:
    """An orthonormal basis [dim, dim − k] of the complement of the memory's span (the identity without memory)."""
    if memory is None:
        return torch.eye(dim, dtype=torch.float64)
    full, _ = torch.linalg.qr(memory, mode="complete")
    return full[:, memory.shape[1]:]


def designed_down_projection(moment: torch.Tensor, memory: torch.Tensor | None, rank: int) -> torch.Tensor:
    """A_t [r, d_in]: the top-r eigenvectors of the input moment inside the memory's complement."""
    basis = complement_basis(memory, moment.shape[0])
    _, vectors = torch.linalg.eigh(basis.T @ moment @ basis)  # ascending eigenvalues
    return (basis @ vectors[:, -rank:].flip(-1)).T


def grown_memory(memory: torch.Tensor | None, moment: torch.Tensor, threshold: float, limit: int) -> torch.Tensor | None:
    """GPM: the memory plus the fewest residual eigenvectors that explain `threshold` of tr C (≤ `limit` columns)."""
    total = float(moment.trace())
    held = memory.shape[1] if memory is not None else 0
    explained = float((memory.T @ moment @ memory).trace()) / total if memory is not None else 0.0
    basis = complement_basis(memory, moment.shape[0])
    values, vectors = torch.linalg.eigh(basis.T @ moment @ basis)
    values, vectors = values.flip(0).clamp(min=0), (basis @ vectors).flip(-1)
    added = 0
    while explained < threshold and held + added < min(limit, moment.shape[0]) and added < len(values):
        explained += float(values[added]) / total
        added += 1
    if added == 0:
        return memory
    new = vectors[:, :added]
    return new if memory is None else torch.cat([memory, new], dim=1)


class InfLoraMethod(TaskVectorMethod):
    """Sequential LoRA whose down-projections are designed in the complement of the earlier tasks' input subspace."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.memory: dict[str, torch.Tensor] = {}

    def prepare_adapter(self, context: "TaskContext", task: "Task") -> list[torch.nn.Parameter]:
        layers = self.adaptation.layers
        moments = layer_input_moments(context, task, {k: layer.get_base_layer() for k, layer in layers.items()})
        with torch.no_grad():
            for key, layer in layers.items():
                down = layer.lora_A[ADAPTER].weight
                design = designed_down_projection(moments[key], self.memory.get(key), down.shape[0])
                down.copy_(design.reshape(down.shape).to(down))
                down.requires_grad_(False)
        return []

    def end_task(self, context: "TaskContext", task: "Task") -> dict[str, Any]:
        keys, rank = list(self.adaptation.layers), self.config.lora.rank
        log = super().end_task(context, task)  # folds the task's update
        backbone = context.model.backbone
        moments = layer_input_moments(context, task, {k: backbone.get_submodule(k.removesuffix(".weight"))
                                                      for k in keys})
        start, steps = self.config.continual_lora.inflora_threshold, max(context.num_tasks - 1, 1)
        threshold = start + (1.0 - start) * task.index / steps
        for key in keys:
            limit = moments[key].shape[0] - rank
            self.memory[key] = grown_memory(self.memory.get(key), moments[key], threshold, limit)
        log["memory_dims"] = {key: (m.shape[1] if m is not None else 0) for key, m in self.memory.items()}
        return log

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "inflora_memory": dict(self.memory)}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        super().load_state_dict(state, device)
        self.memory = {k: v for k, v in state["inflora_memory"].items()}
