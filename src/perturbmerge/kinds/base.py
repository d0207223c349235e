"""The task-kind part: what a task is. Everything that depends on it lives here, so that the merge, Fisher and
perturbation code never branch on it: they see a batch's outputs and one loss per example.

A kind answers four questions (docs/architecture.md, "The part protocol"):

    begin_task(context)                  parameters the kind trains with the adapter (classification: the task's
                                         head rows); called before the method's begin_task
    targets(task, raw)                   a batch's targets as the loss wants them (classification: labels relative
                                         to the task's head block)
    loss(context, outputs, targets)      the training loss, a scalar (the mean over the batch)
    example_losses(context, o, t)        one loss per example, shape [N]: what the Fisher squares the gradients of
    evaluate(context, tasks)             a score per task and over all of them (the run's score matrix R[t][i])

`outputs` are the adapted model's outputs for the batch's inputs (`context.model.backbone(inputs)`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import torch
from torch import nn

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import FisherSettings
    from ..context import TaskContext
    from ..data import Task

ExampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> [N]


def task_kind_for(name: str, config: Any) -> "TaskKind":
    """The kind a stream declares (`TaskStream.kind`), built from the run's config."""
    if name not in TASK_KINDS:
        raise UserError(f"unknown task kind '{name}'; one of {', '.join(TASK_KINDS)}")
    return TASK_KINDS[name](config)


class TaskKind:
    """A task kind; subclasses implement the hooks below."""

    name: ClassVar[str] = "kind"
    score_name: ClassVar[str] = "score (%)"
    has_head: ClassVar[bool] = False  # whether the head parts (methods/head_part.py) apply
    full_weight_fisher: ClassVar[bool] = True  # whether per-example vmap (full-weight Fisher) traces its loss

    def build_model(self, backbone) -> nn.Module:
        """The model the learner trains, around a `backbones.Backbone`; it has the adapted module as `.backbone`."""
        raise NotImplementedError

    def begin_task(self, context: "TaskContext") -> list[nn.Parameter]:
        return []

    def targets(self, task: "Task", raw: torch.Tensor) -> torch.Tensor:
        return raw

    def loss(self, context: "TaskContext", outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.example_losses(context, outputs, targets).mean()

    def example_losses(self, context: "TaskContext", outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fisher_loss(self, context: "TaskContext", settings: "FisherSettings", batches: Iterable[Any],
                    outputs_of: Callable[[Any], torch.Tensor]) -> tuple[Iterable[Any], ExampleLoss]:
        """The Fisher's batches and per-example loss. `fisher.kind=sampled` and `fisher.logits=seen` are
        classification's; other kinds refuse them."""
        if settings.kind != "empirical" or settings.logits != "task":
            raise UserError(f"fisher.kind={settings.kind} / fisher.logits={settings.logits} apply to classification "
                            f"only; the {self.name} kind uses the empirical Fisher of its own loss: remove the keys")
        return batches, lambda outputs, targets: self.example_losses(context, outputs, targets)

    def evaluate(self, context: "TaskContext", tasks: list["Task"]) -> tuple[list[float], float]:
        raise NotImplementedError

    def reference_scores(self, context: "TaskContext", reference: Any) -> dict[str, float]:
        """Scores on the stream's held-out reference data (`TaskStream.reference`), at the deployed weights, for
        the task log; the learner calls it once before the first task too (the pretrained model). None: {}."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}


TASK_KINDS: dict[str, Callable[[Any], TaskKind]] = {}  # name -> (run config -> kind)


def register_task_kind(name: str, factory: Callable[[Any], TaskKind]) -> None:
    """Add a task kind by name (a factory from the run's config); a name that is taken is refused."""
    if name in TASK_KINDS:
        raise ValueError(f"task kind '{name}' is already registered; choose another name")
    TASK_KINDS[name] = factory
