"""The head part of a task-vector method (pm-method.md §5), acting at fixed moments of a task:

    begin      head.probe_epochs: fit the task's new rows on the frozen backbone first (a linear probe)
    drift      head.drift none | sdc | linear: move the stored class statistics (LDA's; linear: FeCAM's too) to the
               merged backbone, before the fold
    finish     after the fold: head.refit_epochs re-fits the task's rows on the merged backbone; head.align_epochs
               re-trains every seen row on features sampled from stored class Gaussians (SLCA, alignment.py);
               head.kind linear |
               prototype (rows ← normalised class means) | lda (every seen class's rows ← the shared-covariance
               Gaussian classifier of the stored statistics) | ranpac (random projection + ridge read-out,
               ranpac.py) | fecam (per-class covariances, Mahalanobis, fecam.py); head.frozen_weight w > 0 adds
               the LDA head of the pretrained backbone as a log-linear ensemble

The stored statistics are sums per class (float64), never examples.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from ..config import HeadSettings
from ..errors import UserError
from ..heads import GaussianClassStatistics, PretrainedEnsemble, pretrained_features
from .alignment import ClassifierAlignment
from .base import to_device
from .drift import linear_drift, semantic_drift
from .fecam import ClassGaussians
from .ranpac import RandomProjectionHead

if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext

KEYS = frozenset({"head.kind", "head.probe_epochs", "head.refit_epochs", "head.shrinkage", "head.drift",
                  "head.drift_ridge", "head.train_logits", "head.frozen_weight", "head.rp_dim",
                  "head.align_epochs", "head.align_samples"})


class HeadProtocol:
    def __init__(self, settings: HeadSettings, head_lr: float, weight_decay: float, run_seed: int) -> None:
        self.settings, self.head_lr, self.weight_decay = settings, head_lr, weight_decay
        self.ranpac = RandomProjectionHead(settings.rp_dim, run_seed)  # head.kind = ranpac
        self.fecam = ClassGaussians()  # head.kind = fecam
        self.alignment = ClassifierAlignment(settings.align_epochs, settings.align_samples, head_lr, run_seed)
        self.class_statistics = GaussianClassStatistics()  # head.kind = lda
        self.frozen_statistics = GaussianClassStatistics()  # head.frozen_weight > 0: the same, on θ_0
        self.pretrained_weights: dict[str, torch.Tensor] | None = None  # θ_0 in merge space (head.frozen_weight)
        self.log: dict[str, Any] = {}
        self.rows_after_fold = HEAD_ROWS_AFTER_FOLD[settings.kind]  # resolved once (head.kind)

    @property
    def is_default(self) -> bool:
        """The paper's masked linear head and nothing more (what a kind without a head runs with)."""
        s = self.settings
        return (s.kind == "linear" and s.drift == "none" and s.train_logits == "task" and s.frozen_weight == 0
                and not (s.probe_epochs or s.refit_epochs or s.align_epochs))

    def applies(self, context: "TaskContext", method: str) -> bool:
        """Whether the task kind has a head for this part to act on; a kind without one (regression, causal LM)
        refuses head settings in one line instead of ignoring them."""
        if context.kind.has_head:
            return True
        if not self.is_default:
            raise UserError(f"method '{method}' sets head.* options, but the {context.kind.name} task kind has no "
                            f"classifier head; remove the head.* keys or pick a method without a head")
        return False

    def begin_task(self, context: "TaskContext", task: "Task", adaptation) -> None:
        """After the adapter is attached: drop the ensemble until the merge; keep θ_0 at the first task; probe."""
        context.kind.set_ensemble(context, None)  # rebuilt after the merge, once the task's classes have rows in it
        context.kind.set_classifier(context, None)  # likewise (ranpac)
        if self.settings.frozen_weight > 0 and task.index == 0:  # (a resume inside a later task loads θ_0 later)
            self.pretrained_weights = {k: v.detach().clone() for k, v in adaptation.merged_weights().items()}

    def probe(self, context: "TaskContext", task: "Task") -> None:
        self.log = ({"probe_losses": context.kind.fit_head(context, task, self.settings.probe_epochs, self.head_lr,
                                                      self.weight_decay, tag=1)}
                    if self.settings.probe_epochs else {})

    def compensate_drift(self, context: "TaskContext", task: "Task", adaptation, alpha) -> dict[str, float]:
        """Before the fold (the adapter still holds Δ_t): move the stored statistics to θ̂_t."""
        statistics = self.fecam if self.settings.kind == "fecam" else self.class_statistics
        if self.settings.drift == "none" or not statistics.sums:
            return {}
        if self.settings.drift == "sdc":
            return {"mean_drift": semantic_drift(statistics, adaptation, context, task, alpha)}
        return {"mean_drift": linear_drift(statistics, adaptation, context, task, alpha, self.settings.drift_ridge)}

    @property
    def acts_after_fold(self) -> bool:
        """Whether `finish_task` changes the head (a refit, prototype or LDA rows)."""
        return bool(self.settings.refit_epochs or self.settings.align_epochs) or self.settings.kind != "linear"

    def finish_task(self, context: "TaskContext", task: "Task") -> dict[str, Any]:
        """After the fold, on the merged and frozen backbone: refit, then prototype or LDA rows (and ensemble)."""
        s = self.settings
        log = dict(self.log)
        if s.refit_epochs:
            log["refit_losses"] = context.kind.fit_head(context, task, s.refit_epochs, self.head_lr, self.weight_decay, tag=2)
        if s.align_epochs:
            log.update(self.alignment.align(context, task))
        log.update(self.rows_after_fold(self, context, task))
        return log

    def _pretrained_ensemble(self, context: "TaskContext", task: "Task") -> PretrainedEnsemble:
        """Add the task's class statistics on the pretrained backbone; the ensemble's head ← their LDA rows."""
        model = context.model
        add_task_statistics(self.frozen_statistics, context, task,
                            lambda inputs: pretrained_features(model.backbone, self.pretrained_weights, inputs))
        rows, biases = self.frozen_statistics.dense_classifier(self.settings.shrinkage, model.head.num_classes)
        dtype = model.head.blocks[0].weight.dtype
        return PretrainedEnsemble(self.pretrained_weights, rows.to(context.device, dtype),
                                  biases.to(context.device, dtype), self.settings.frozen_weight)

    def state_dict(self) -> dict[str, Any]:
        return {"head_log": self.log, "class_statistics": self.class_statistics.state_dict(),
                "frozen_statistics": self.frozen_statistics.state_dict(),
                "pretrained_weights": self.pretrained_weights, "ranpac": self.ranpac.state_dict(),
                "fecam": self.fecam.state_dict(), "alignment": self.alignment.state_dict()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.log = dict(state.get("head_log", {}))
        self.class_statistics.load_state_dict(state["class_statistics"])
        self.frozen_statistics.load_state_dict(state["frozen_statistics"])
        self.pretrained_weights = to_device(state["pretrained_weights"], device)
        for name in ("ranpac", "fecam", "alignment"):  # (checkpoints written before these heads have none)
            if name in state:
                getattr(self, name).load_state_dict(state[name], device)


def _linear_rows(protocol: HeadProtocol, context: "TaskContext", task: "Task") -> dict[str, Any]:
    """linear: the rows keep what training (and a refit or alignment) gave them."""
    return {}


def _prototype_rows(protocol: HeadProtocol, context: "TaskContext", task: "Task") -> dict[str, Any]:
    """prototype: the task's rows ← its normalised class means on the merged backbone."""
    set_prototype_rows(context.kind.block(context), *context.kind.class_feature_sums(context, task))
    return {}


def _lda_rows(protocol: HeadProtocol, context: "TaskContext", task: "Task") -> dict[str, Any]:
    """lda: every seen class's rows ← the shared-covariance Gaussian classifier (+ the pretrained ensemble)."""
    write_lda_rows(protocol.class_statistics, context, task, protocol.settings.shrinkage)
    if protocol.settings.frozen_weight > 0:
        context.kind.set_ensemble(context, protocol._pretrained_ensemble(context, task))
    return {}


def _statistics_classifier(name: str) -> Callable[[HeadProtocol, "TaskContext", "Task"], dict[str, Any]]:
    """ranpac / fecam: add the task's statistics; their classifier replaces the head's logits."""
    def rows(protocol: HeadProtocol, context: "TaskContext", task: "Task") -> dict[str, Any]:
        statistics = getattr(protocol, name)
        log = statistics.add_task(context, task)
        context.kind.set_classifier(context, statistics.classifier(context.device))
        return log
    return rows


HEAD_ROWS_AFTER_FOLD: dict[str, Callable[[HeadProtocol, "TaskContext", "Task"], dict[str, Any]]] = {
    "linear": _linear_rows, "prototype": _prototype_rows, "lda": _lda_rows,
    "ranpac": _statistics_classifier("ranpac"), "fecam": _statistics_classifier("fecam")}


@torch.no_grad()
def set_prototype_rows(block: torch.nn.Linear, sums: torch.Tensor, counts: torch.Tensor) -> None:
    """Rows ← L2-normalised class means (rows without examples keep their weights), bias 0: for a feature f the
    logit is ‖f‖·cos(f, mean), so the arg-max over classes is the cosine classifier's."""
    for row in range(block.out_features):
        if counts[row] > 0:
            mean = sums[row] / counts[row]
            block.weight[row] = (mean / mean.norm().clamp(min=1e-12)).to(block.weight.dtype)
    block.bias.zero_()


def add_task_statistics(statistics: GaussianClassStatistics, context: "TaskContext", task: "Task",
                        features_of: Callable[[Any], torch.Tensor] | None = None) -> None:
    """Add the task's class statistics on the backbone as it is now (or on `features_of`)."""
    sums, counts, moment = context.kind.class_feature_statistics(context, task, features_of=features_of)
    statistics.add([task.label_offset + row for row in range(len(counts))], sums, counts, moment)


def write_lda_rows(statistics: GaussianClassStatistics, context: "TaskContext", task: "Task",
                   shrinkage: float) -> None:
    """Add the task's class statistics on the backbone as it is now; every seen class's rows ← the LDA rows."""
    add_task_statistics(statistics, context, task)
    statistics.write_rows(context.model.head, shrinkage)
