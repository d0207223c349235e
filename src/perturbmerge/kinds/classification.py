"""Classification: a batch is (inputs, labels), the model is a backbone and an expanding linear head
(heads.ContinualClassifier), the loss is cross-entropy and the score is accuracy (%) with every seen class competing
(no task id). It also serves the head parts (methods/head_part.py, prototype.py, ranpac.py, fecam.py): the task's
head block, class statistics of features, head fits, and the classifier or ensemble that replaces the head's logits.

    training loss   head.train_logits task: cross-entropy over the current task's logits (the masked loss of
                    pm-method.md §5); seen: over every seen class's, labels as global head positions
    Fisher loss     fisher.logits task | seen likewise; fisher.kind sampled: labels drawn from the model's
                    predictive distribution (one draw per example, seeded per task), the true Fisher
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..streams import fisher_labels_seed
from .base import ExampleLoss, TaskKind, register_task_kind

if TYPE_CHECKING:
    from ..config import FisherSettings
    from ..context import TaskContext
    from ..data import Task


class ClassificationKind(TaskKind):
    name = "classification"
    score_name = "accuracy (%)"
    has_head = True

    def __init__(self, train_logits: str = "task") -> None:
        self.train_logits = train_logits
        self.head_block = 0  # the block of the current task

    def build_model(self, backbone) -> nn.Module:
        from ..heads import ContinualClassifier

        return ContinualClassifier(backbone.module, backbone.feature_dim)

    # ---- the task's head rows ------------------------------------------------------------------------------
    def begin_task(self, context: "TaskContext") -> list[nn.Parameter]:
        """New rows for a class-incremental task (old ones frozen); the shared block for domain-incremental."""
        head = context.model.head
        if context.scenario == "class-incremental" or not len(head.blocks):
            head.add_block(context.task.num_classes)
        block = head.blocks[-1]
        block.requires_grad_(True)
        self.head_block = len(head.blocks) - 1
        return list(block.parameters())

    def targets(self, task: "Task", raw: torch.Tensor) -> torch.Tensor:
        return raw - task.label_offset

    def task_logits(self, context: "TaskContext", features: torch.Tensor) -> torch.Tensor:
        """The current task's logits only (the masked loss of pm-method.md §5)."""
        return context.model.head.block_logits(features, self.head_block)

    def block(self, context: "TaskContext") -> nn.Linear:
        return context.model.head.blocks[self.head_block]

    # ---- losses --------------------------------------------------------------------------------------------
    def loss(self, context: "TaskContext", outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.train_logits == "seen":
            return F.cross_entropy(context.model.head(outputs), targets + context.task.label_offset)
        return F.cross_entropy(self.task_logits(context, outputs), targets)

    def example_losses(self, context: "TaskContext", outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.task_logits(context, outputs), targets, reduction="none")

    def fisher_loss(self, context: "TaskContext", settings: "FisherSettings", batches: Iterable[Any],
                    outputs_of: Callable[[Any], torch.Tensor]) -> tuple[Iterable[Any], ExampleLoss]:
        task = context.task
        logits_fn: Callable[[torch.Tensor], torch.Tensor] = lambda features: self.task_logits(context, features)
        if settings.logits == "seen":
            logits_fn = context.model.head
            batches = ((inputs, labels + task.label_offset) for inputs, labels in batches)
        if settings.kind == "sampled":
            batches = model_sampled_labels(batches, outputs_of, logits_fn,
                                           torch.Generator().manual_seed(fisher_labels_seed(context.seed, task.index)))
        return batches, lambda outputs, labels: F.cross_entropy(logits_fn(outputs), labels, reduction="none")

    # ---- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self, context: "TaskContext", tasks: list["Task"]) -> tuple[list[float], float]:
        """Accuracy (%) per task and over all their test data; all seen classes compete."""
        per_task, correct_all, total_all = [], 0, 0
        for task in tasks:
            correct, total = 0, 0
            for inputs, labels in context.loader(task.test, context.eval_batch_size):
                inputs, labels = context.own_rows(inputs, labels)
                if not len(labels):
                    continue
                with context.autocast():
                    predictions = context.model(context.to_device(inputs)).argmax(-1).cpu()
                correct += int((predictions == labels).sum())
                total += int(labels.numel())
            if context.world.size > 1:  # every example counted once, whatever the shard sizes
                correct, total = (int(v) for v in context.world.sum_(torch.tensor([correct, total],
                                                                                  device=context.device)))
            per_task.append(100.0 * correct / total)
            correct_all, total_all = correct_all + correct, total_all + total
        return per_task, 100.0 * correct_all / total_all

    # ---- what the head parts use -----------------------------------------------------------------------------
    def set_classifier(self, context: "TaskContext", classifier: Any) -> None:
        """A classifier that replaces the head's logits (RanPAC's, FeCAM's; None: the head's own rows)."""
        context.model.classifier = classifier

    def set_ensemble(self, context: "TaskContext", ensemble: Any) -> None:
        """The pretrained-backbone ensemble of the LDA head (None: none)."""
        context.model.ensemble = ensemble

    def class_feature_sums(self, context: "TaskContext", task: "Task") -> tuple[torch.Tensor, torch.Tensor]:
        """Per row of the current head block: the sum of the task's training features (float64) and their count,
        over every process's shard, on the backbone as it is now (eval mode)."""
        return self.class_feature_statistics(context, task, second_moment=False)[:2]

    @torch.no_grad()
    def class_feature_statistics(self, context: "TaskContext", task: "Task", second_moment: bool = True,
                                 features_of: Callable[[Any], torch.Tensor] | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`class_feature_sums` and (with `second_moment`) Σ_x x xᵀ [d, d] of the same features (float64);
        `features_of` replaces the backbone as the feature map."""
        context.model.eval()
        block = self.block(context)
        device = context.device
        sums = torch.zeros(block.out_features, block.in_features, dtype=torch.float64, device=device)
        counts = torch.zeros(block.out_features, dtype=torch.float64, device=device)
        moment = (torch.zeros(block.in_features, block.in_features, dtype=torch.float64, device=device)
                  if second_moment else None)
        for inputs, labels in context.batches(task.train, context.eval_batch_size):
            features = (features_of or context.model.backbone)(inputs).double()
            sums.index_add_(0, labels, features)
            counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
            if moment is not None:
                moment.addmm_(features.T, features)
        world = context.world
        return world.sum_(sums), world.sum_(counts), None if moment is None else world.sum_(moment)

    def fit_head(self, context: "TaskContext", task: "Task", epochs: int, lr: float, weight_decay: float,
                 tag: int) -> list[float]:
        """Train the current head block alone on frozen features of the backbone as it is now (eval mode), with
        the masked loss (the task's own logits), a fresh AdamW, and shuffles seeded apart from the main training
        (`tag`); returns the mean loss per epoch."""
        block = self.block(context)
        block.requires_grad_(True)
        optimizer = torch.optim.AdamW(block.parameters(), lr=lr, weight_decay=weight_decay)
        context.model.eval()
        losses = []
        for epoch in range(epochs):
            total, count = 0.0, 0
            for inputs, labels in context.loader(task.train, context.batch_size, shuffle=True,
                                                 epoch=tag * 1000 + epoch):
                with torch.no_grad():
                    features = context.model.backbone(context.to_device(inputs))
                loss = F.cross_entropy(block(features), (labels - task.label_offset).to(context.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * len(labels), count + len(labels)
            losses.append(total / count)
        return losses


def model_sampled_labels(batches: Iterable, outputs_of: Callable[[Any], torch.Tensor],
                         logits_fn: Callable[[torch.Tensor], torch.Tensor],
                         generator: torch.Generator) -> Iterator[tuple[Any, torch.Tensor]]:
    """The batches with labels replaced by draws y ~ softmax(logits) of the current model."""
    for inputs, _ in batches:
        with torch.no_grad():
            probabilities = logits_fn(outputs_of(inputs)).double().softmax(-1).cpu()
        labels = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
        yield inputs, labels.to(_device_of(inputs))


def _device_of(inputs: Any) -> torch.device:
    return next(iter(inputs.values())).device if isinstance(inputs, dict) else inputs.device


register_task_kind("classification", lambda config: ClassificationKind(config.head.train_logits))
