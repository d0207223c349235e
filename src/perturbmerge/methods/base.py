"""What every method is: the hooks the learner calls, the config keys common to all, and small tensor sums."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..config import RunConfig

if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext

COMMON_KEYS = frozenset(
    {"benchmark", "method", "seed", "tasks", "epochs", "batch_size", "eval_batch_size", "lr", "head_lr",
     "weight_decay", "device", "data_dir", "backbone", "checkpoint.enabled", "checkpoint.every_steps",
     "checkpoint.keep_final", "precision", "grad_accumulation", "save_model", "log.tensorboard"}
)

# (key, the largest value in normal use): a diverged run names the settings above these before blaming lr
UNUSUAL_ABOVE = (("epsilon", 10.0), ("weight_decay", 1.0), ("head_lr", 1.0), ("ewc_lambda", 1e8), ("lr", 0.1))


def divergence_advice(config: RunConfig, extra: str = "") -> str:
    """'lower epsilon (now 1e+308)' for the settings far outside their usual range, else 'lower lr (now …)'."""
    unusual = [f"{key} (now {getattr(config, key)})" for key, limit in UNUSUAL_ABOVE
               if isinstance(getattr(config, key, None), (int, float)) and getattr(config, key) > limit]
    scale = config.lora.alpha / config.lora.rank
    if scale > 1e3:
        unusual.append(f"lora.alpha (now {config.lora.alpha}, a LoRA scale of {scale:.3g})")
    return f"lower {' or '.join(unusual)}" if unusual else f"lower lr (now {config.lr}){extra}"


class Method:
    """Hooks the learner calls. Subclasses override what they need."""

    name = "method"
    merges = False
    trains = True  # False: the learner runs no optimisation steps (e.g. prototype classifiers)

    def check_backbone(self, backbone: "torch.nn.Module") -> None:
        """Fail before any output is written if the method cannot work on this backbone."""

    def begin_task(self, context: "TaskContext", task: "Task") -> None:
        raise NotImplementedError

    def train_step(self, context: "TaskContext", batch: tuple[Any, torch.Tensor]) -> float:
        raise NotImplementedError

    def end_task(self, context: "TaskContext", task: "Task") -> dict[str, Any]:
        return {}

    def deployed_weights(self) -> dict[str, torch.Tensor] | None:
        """Weights (backbone parameter name → tensor) of the model that is evaluated, when they differ from
        the ones training continues from; None when they are the same."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything of the method's own that a checkpoint must hold (nested dicts/lists of tensors and plain
        values); the model's weights are saved by the learner. Called at task ends and between optimiser steps."""
        return {}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore `state_dict()`; called after `begin_task` when resuming inside a task."""


def total(tensors: dict[str, torch.Tensor]) -> float:
    """Σ of every element (e.g. the Fisher mass Σ F_t)."""
    return float(sum(float(t.sum()) for t in tensors.values()))


def sum_norm_sq(tensors: dict[str, torch.Tensor]) -> float:
    """Σ_k ‖t_k‖² in float64."""
    return float(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def to_device(tensors: dict[str, torch.Tensor] | None, device: torch.device) -> dict[str, torch.Tensor] | None:
    """A checkpoint's tensor dict (or None) moved to `device`."""
    return None if tensors is None else {k: v.to(device) for k, v in tensors.items()}

