"""SimpleCIL (Zhou et al., 2023) and frozen-lda: a frozen pretrained backbone and a classifier from class statistics.

SimpleCIL: one prototype per class (the mean feature of its training data), cosine classifier. Head rows are the
L2-normalised prototypes with zero bias: for a feature f, f·p/‖p‖ = ‖f‖·cos(f, p), and ‖f‖ is the same for every
class, so the arg-max is the cosine classifier's. With head.kind = lda, the frozen backbone gets the
shared-covariance Gaussian classifier instead (the frozen-backbone diagnostic for pm-lora with the same head);
with head.kind = ranpac, RanPAC's random-projection ridge head (`ranpac`: the paper without its first-session
adaptation); with head.kind = fecam, FeCAM's per-class Mahalanobis head (`fecam`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..config import RunConfig
from ..errors import UserError
from ..heads import GaussianClassStatistics
from .base import Method
from .head_part import set_prototype_rows, write_lda_rows
from .fecam import ClassGaussians
from .ranpac import RandomProjectionHead

if TYPE_CHECKING:
    from ..data import Task
    from ..context import TaskContext

KEYS = frozenset({"head.kind", "head.shrinkage", "head.rp_dim"})


class ZeroShot(Method):
    """The pretrained model as it is: nothing trains or merges; every task is only evaluated (a generative kind's
    reference point, e.g. SmolLM2 before any fine-tuning)."""

    name = "zero-shot"
    trains = False

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def begin_task(self, context: "TaskContext", task: "Task") -> None:
        """Nothing to prepare."""


class SimpleCIL(Method):
    name = "simplecil"
    trains = False

    def __init__(self, config: RunConfig) -> None:
        if config.head.kind not in ("prototype", "lda", "ranpac", "fecam"):
            raise UserError(f"a frozen-backbone method's head is prototype, lda, ranpac or fecam, got head.kind="
                            f"{config.head.kind}; remove the key or set head.kind=lda")
        self.config = config
        self.class_statistics = GaussianClassStatistics()  # per head position (domain-incremental: all domains)
        self.heads = {"ranpac": RandomProjectionHead(config.head.rp_dim, config.seed), "fecam": ClassGaussians()}

    def begin_task(self, context: "TaskContext", task: "Task") -> None:
        """Nothing to prepare: the task kind has added the task's head rows."""
        if not context.kind.has_head:
            raise UserError(f"method '{self.config.method}' is a classifier from class statistics; the "
                            f"{context.kind.name} task kind has no classes: pick a method that trains an adapter")

    def state_dict(self) -> dict[str, Any]:
        return {"class_statistics": self.class_statistics.state_dict(),
                **{name: head.state_dict() for name, head in self.heads.items()}}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.class_statistics.load_state_dict(state["class_statistics"])
        for name, head in self.heads.items():  # (checkpoints written before these heads have none)
            if name in state:
                head.load_state_dict(state[name], device)

    @torch.no_grad()
    def end_task(self, context: "TaskContext", task: "Task") -> dict[str, Any]:
        block = context.kind.block(context)
        block.requires_grad_(False)
        if self.config.head.kind == "lda":
            write_lda_rows(self.class_statistics, context, task, self.config.head.shrinkage)
            return {}
        if self.config.head.kind in self.heads:
            head = self.heads[self.config.head.kind]
            log = head.add_task(context, task)
            context.kind.set_classifier(context, head.classifier(context.device))
            return log
        statistics = self.class_statistics
        positions = [task.label_offset + row for row in range(block.out_features)]
        statistics.add(positions, *context.kind.class_feature_sums(context, task))
        known = [statistics.sums.get(p, torch.zeros(block.in_features, dtype=torch.float64)) for p in positions]
        counts = [int(statistics.counts.get(p, 0)) for p in positions]
        set_prototype_rows(block, torch.stack([k.to(context.device) for k in known]),
                           torch.tensor(counts, dtype=torch.float64))
        return {"prototype_counts": counts}
