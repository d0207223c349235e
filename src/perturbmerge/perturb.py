"""Train with Perturbation (pm-method.md §3): the ±ε schedule and how it is applied.

Each optimiser step draws s ∈ {−1, 0, +1} with probabilities ((1−p0)/2, p0, (1−p0)/2) and evaluates the loss at
θ + s ε Δ, Δ = θ − θ̂_{t-1}. Then E_s[L(θ + sεΔ)] = L(θ) + p± ε² ΔᵀHΔ + O(ε⁴), p± = (1−p0)/2: a Hessian
regulariser at the cost of one forward and one backward pass per step.

- LoRA: θ + sεΔ = W + (1 + sε)·scale·B A, i.e. the LoRA branch output is scaled by (1 + sε).
- Full weights: the loss at θ + sε(θ − θ̂) is evaluated functionally, so the gradient carries (1 + sε).
- Gaussian ablation: same schedule with an isotropic Gaussian direction of the same norm as Δ (per tensor).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PerturbationSchedule:
    """One draw of s ∈ {−1, 0, +1} per optimiser step, from its own generator (reproducible, resumable)."""

    epsilon: float = 0.5
    p0: float = 1.0 / 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.p0 <= 1.0:
            raise ValueError(f"p0 must be in [0, 1], got {self.p0}")
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def p_side(self) -> float:
        """p+ = p− = (1 − p0) / 2."""
        return (1.0 - self.p0) / 2.0

    @property
    def regulariser_weight(self) -> float:
        """Coefficient of ΔᵀHΔ in the expected loss: p± ε²."""
        return self.p_side * self.epsilon**2

    def draw(self) -> int:
        u = float(torch.rand((), generator=self.generator))
        if u < self.p_side:
            return -1
        if u < self.p_side + self.p0:
            return 0
        return 1

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def perturbed_parameters(
    params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], shift: float
) -> dict[str, torch.Tensor]:
    """θ + shift·(θ − θ̂) for every parameter in `anchor` (others unchanged); differentiable in θ."""
    return {k: (p + shift * (p - anchor[k]) if k in anchor else p) for k, p in params.items()}


def gaussian_like(direction: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Isotropic Gaussian noise with the same norm as `direction`, tensor by tensor (zero where it is zero)."""
    out = {}
    for k, d in direction.items():
        noise = torch.randn(d.shape, generator=generator, dtype=torch.float32).to(device=d.device, dtype=d.dtype)
        norm = noise.norm()
        out[k] = noise * (d.norm() / norm) if norm > 0 else torch.zeros_like(d)
    return out


def apply_weight(layer: nn.Module, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The output of `layer`'s operation with another weight and no bias (used to add sε·N·x)."""
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(inputs, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, nn.Linear):
        return F.linear(inputs, weight)
    return inputs @ weight  # transformers Conv1D stores W as [in, out]


@contextlib.contextmanager
def lora_branch_scale(lora_layers: Mapping[str, nn.Module], factor: float, adapter: str = "default") -> Iterator[None]:
    """Scale every LoRA branch output by `factor` (= 1 + sε) inside the block; restore scale 1 after."""
    if factor == 1.0:
        yield
        return
    for layer in lora_layers.values():
        layer.set_scale(adapter, factor)
    try:
        yield
    finally:
        for layer in lora_layers.values():
            layer.set_scale(adapter, 1.0)


@contextlib.contextmanager
def added_weight_noise(
    lora_layers: Mapping[str, nn.Module], noise: Mapping[str, torch.Tensor], shift: float
) -> Iterator[None]:
    """Add shift · N_k · x to the output of each layer k (the Gaussian ablation, W-space) inside the block."""
    if shift == 0.0:
        yield
        return
    handles = []
    for name, layer in lora_layers.items():
        base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
        weight = noise[name]

        def hook(module, args, output, base=base, weight=weight):
            return output + shift * apply_weight(base, args[0], weight)

        handles.append(layer.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
