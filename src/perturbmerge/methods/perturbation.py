"""The perturbation part (pm-method.md §3): one draw s ∈ {−1, 0, +1} per optimiser step, applied to the forward.

    none          s = 0 always (no draw is taken from the stream)
    task_vector   the weights W + (1 + sε)ΔW: P&M's perturbation along the task vector
    gaussian      W + ΔW + sε·N with N isotropic Gaussian of ΔW's norm per tensor (the ablation)

It owns ε, p0, the draw stream and the Gaussian direction stream, and counts the draws of the current task. The
kind is resolved once, from `PERTURBED_FORWARDS`, when the part is built (not by name on every forward).
"""
from __future__ import annotations

from typing import Any, Callable, Literal

import torch

from ..perturb import PerturbationSchedule
from ..streams import generator, stream_seed

PerturbationKind = Literal["none", "task_vector", "gaussian"]
KEYS = frozenset({"epsilon", "p0"})  # read only when the kind is not "none"

# (adaptation, inputs, shift = sε, Gaussian generator) -> the adapted model's outputs at the perturbed weights
PerturbedForward = Callable[[Any, Any, float, torch.Generator], torch.Tensor]
PERTURBED_FORWARDS: dict[str, PerturbedForward] = {
    "none": lambda adaptation, inputs, shift, generator: adaptation.features(inputs),
    "task_vector": lambda adaptation, inputs, shift, generator: adaptation.features_along_task_vector(inputs, shift),
    "gaussian": lambda adaptation, inputs, shift, generator: adaptation.features_with_noise(inputs, shift, generator),
}


class Perturbation:
    def __init__(self, kind: PerturbationKind, epsilon: float, p0: float, run_seed: int) -> None:
        if kind not in PERTURBED_FORWARDS:
            raise ValueError(f"unknown perturbation '{kind}'; one of {', '.join(PERTURBED_FORWARDS)}")
        self.kind, self.epsilon = kind, epsilon
        self.forward: PerturbedForward = PERTURBED_FORWARDS[kind]
        self.schedule = PerturbationSchedule(epsilon, p0, seed=stream_seed(run_seed, "perturbation"))
        self.noise_generator = generator(run_seed, "gaussian_noise")
        self.draws = {-1: 0, 0: 0, 1: 0}
        self.last_draw: int | None = None  # for the per-step log

    @property
    def keys(self) -> frozenset[str]:
        return KEYS if self.kind != "none" else frozenset()

    def begin_task(self) -> None:
        self.draws = {-1: 0, 0: 0, 1: 0}

    def draw(self) -> int:
        """This optimiser step's s (one draw per step, whatever the number of micro-batches)."""
        sign = self.schedule.draw() if self.kind != "none" else 0
        self.draws[sign] += 1
        self.last_draw = sign
        return sign

    def features(self, adaptation, inputs: Any, sign: int) -> torch.Tensor:
        """The backbone's features at the perturbed weights of draw `sign`."""
        return self.forward(adaptation, inputs, sign * self.epsilon, self.noise_generator)

    def log(self) -> dict[str, Any]:
        return {"perturbation_draws": {str(k): v for k, v in self.draws.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state(), "noise": self.noise_generator.get_state(), "draws": self.draws}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.set_state(state["schedule"])
        self.noise_generator.set_state(state["noise"])
        self.draws = dict(state["draws"])
