"""The task-vector family as one recipe of parts (pm-method.md §1–§5): sequential fine-tuning, merging and P&M.

    adaptation     LoRA (a fresh PEFT adapter per task) | full: what trains, and the merge space
    perturbation   none | task_vector | gaussian (perturbation.py)
    merger         closed form | data-free | sequential fold (merger.py)
    regulariser    none | online EWC (regulariser.py)
    head           probe, drift, refit, prototype / LDA rows, ensemble (head_part.py)

`end_task` is one fixed pipeline: merger decides α (its Fisher pass included) → head moves its statistics →
fold θ̂_t = θ̂_{t−1} + α Δ_t → head after the fold. The learner owns the optimiser step.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F

from ..adaptation import FullAdaptation, LoraAdaptation, resolve_lora_targets
from ..config import RunConfig
from .base import Method, divergence_advice, sum_norm_sq
from .head_part import HeadProtocol
from ..errors import UserError
from .merger import ClosedFormMerger, SequentialFold
from .perturbation import Perturbation

if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext

LORA_KEYS = frozenset({"lora.rank", "lora.alpha", "lora.dropout", "lora.targets"})


class TaskVectorMethod(Method):
    """A method built from parts; subclasses change what happens at the end of a task."""

    divergence_hint = ""

    def __init__(self, name: str, config: RunConfig, adaptation: str, perturbation: Perturbation,
                 merger: SequentialFold, lora_targets: list[str], regulariser=None) -> None:
        self.name, self.config = name, config
        self.adaptation_kind = adaptation
        lora = config.lora
        self.make_adaptation: Callable[[], LoraAdaptation | FullAdaptation] = (
            (lambda: LoraAdaptation(lora.rank, lora.alpha, lora.dropout, lora.targets or lora_targets))
            if adaptation == "lora" else FullAdaptation)
        self.perturbation, self.merger, self.regulariser = perturbation, merger, regulariser
        self.merges = merger.merges
        self.head = HeadProtocol(config.head, config.head_lr, config.weight_decay, config.seed)
        self.uses_head = True  # (begin_task asks the task kind)
        self.adaptation: LoraAdaptation | FullAdaptation | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        # save_task_models: θ̂_{t-1} and θ*_t of the task just finished, in merge space, and its α (the runner
        # writes them to the run folder at the end_task event)
        self.task_models: dict[str, Any] | None = None

    @property
    def last_draw(self) -> int | None:
        return self.perturbation.last_draw

    def check_backbone(self, backbone: "torch.nn.Module") -> None:
        if self.adaptation_kind == "lora":
            resolve_lora_targets(backbone, self.make_adaptation().targets)

    @property
    def computes_fisher(self) -> bool:
        """Whether the method estimates the task's Fisher (the closed-form merge; Fisher-weighted families say so)."""
        return isinstance(self.merger, ClosedFormMerger)

    def begin_task(self, context: "TaskContext", task: "Task") -> None:
        c = self.config
        if self.adaptation_kind == "full" and self.computes_fisher and not context.kind.full_weight_fisher:
            raise UserError(f"method '{self.name}' estimates a Fisher of every weight with per-example vmap, which "
                            f"cannot trace the {context.kind.name} kind's loss; use a LoRA method (e.g. pm-lora)")
        head_params = context.kind_parameters
        self.adaptation = self.make_adaptation()
        self.adaptation.attach(context.model.backbone)
        context.model.to(context.device)
        extra_parameters = self.prepare_adapter(context, task)
        self.uses_head = self.head.applies(context, self.name)
        if self.uses_head:
            self.head.begin_task(context, task, self.adaptation)
        self.optimizer = torch.optim.AdamW(
            [{"params": self.adaptation.trainable_parameters() + extra_parameters, "lr": c.lr},
             {"params": head_params, "lr": c.head_lr}],
            weight_decay=c.weight_decay,
        )
        self.perturbation.begin_task()
        if self.uses_head:
            self.head.probe(context, task)  # the new rows fit the features before the LoRA moves them

    def prepare_adapter(self, context: "TaskContext", task: "Task") -> list[torch.nn.Parameter]:
        """After the task's fresh adapter is attached, before the optimiser is built: a subclass may set or freeze
        the adapter's matrices and return parameters of its own that train with the adapter (at lr)."""
        return []

    def train_step(self, context: "TaskContext", batch: tuple[Any, torch.Tensor]) -> float:
        sign = self.perturbation.draw()  # one draw per optimiser step
        return context.optimiser_step(self.optimizer, batch, lambda part: self.objective(context, part, sign),
                                      lambda: divergence_advice(self.config, self.divergence_hint))

    def objective(self, context: "TaskContext", batch: tuple[Any, torch.Tensor],
                  sign: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective to minimise, task loss to report) on a batch, at the perturbed weights of draw `sign`: the
        task kind's training loss (classification: head.train_logits) plus the regulariser's penalty."""
        inputs, targets = batch
        loss = context.kind.loss(context, self.perturbation.features(self.adaptation, inputs, sign), targets)
        penalty = self.regulariser.penalty(self.adaptation) if self.regulariser is not None else None
        return (loss if penalty is None else loss + penalty), loss

    def fold_adapter(self, context: "TaskContext", alpha: float | dict[str, float]) -> torch.nn.Module:
        """Fold the task's adapter in with coefficient α; the model's backbone becomes the plain result."""
        context.set_backbone(self.adaptation.fold(alpha))
        self.adaptation = None
        self.optimizer = None
        return context.model.backbone

    def end_task(self, context: "TaskContext", task: "Task") -> dict[str, Any]:
        """merger: α_t (Fisher at θ*_t, unperturbed, eval mode) → head drift → fold → head after the fold."""
        task_vector = self.adaptation.task_vector()
        log: dict[str, Any] = {"task_vector_norm": sum_norm_sq(task_vector) ** 0.5, **self.perturbation.log()}
        if self.config.save_task_models:
            before = {k: v.detach().clone() for k, v in self.adaptation.merged_weights().items()}
            self.task_models = {"previous": before, "optimum": {k: before[k] + task_vector[k] for k in task_vector}}
        if self.merges:
            started = time.perf_counter()
            log["acc_before_merge"] = context.evaluate([task])[0][0]
            log["acc_before_merge_s"] = time.perf_counter() - started
        started = time.perf_counter()
        alpha, merge_log = self.merger.decide(self.adaptation, context, task, task_vector)
        log.update(merge_log)
        if self.uses_head:
            log.update(self.head.compensate_drift(context, task, self.adaptation, alpha))
        if self.task_models is not None:
            self.task_models["alpha"] = alpha
        self.fold_adapter(context, alpha)
        log["merge_s"] = time.perf_counter() - started - log.get("fisher_s", 0.0)  # α + fold (+ drift), Fisher aside
        if self.uses_head:
            log.update(self.head.finish_task(context, task))
        return log

    def state_dict(self) -> dict[str, Any]:
        full = isinstance(self.adaptation, FullAdaptation)
        return {"merge": self.merger.state_dict(), **self.perturbation.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "anchor": self.adaptation.anchor if full else None,  # θ̂_{t-1} of full fine-tuning
                **self.head.state_dict()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.merger.load_state_dict(state["merge"], device)
        self.perturbation.load_state_dict(state)
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if state["anchor"] is not None:
            self.adaptation.anchor = {k: v.to(device) for k, v in state["anchor"].items()}
        self.head.load_state_dict(state, device)
