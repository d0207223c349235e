"""`TaskContext`: the one object the learner hands to every part (method, adaptation, merger, head, task kind)
during a run, like the state and control objects a transformers callback receives. Parts read and change the run
through it and never hold or import the learner (docs/architecture.md, "The part protocol").

What it carries:
    model                  the model being trained (`.backbone`, and for classification `.head`)
    kind                   the task kind (kinds/): targets, losses, evaluation, the head's services
    task, num_tasks        the current task (None between tasks) and the stream's length
    scenario               class-incremental | domain-incremental
    device, precision      where tensors live; fp32 | bf16 (autocast of forward passes)
    world                  the processes (distributed.World): shards and sums
    seed, batch_size, eval_batch_size, progress, collate
    kind_parameters        what the kind trains beside the adapter this task (classification: the head rows)

What it does for a part (the learner's services, given to it at construction):
    batches(dataset, n)    this process's rows of the dataset's batches, on the device, targets by the kind
    loader(...)            the training (seeded shuffles) and evaluation (length-sorted) loaders
    optimiser_step(...)    one optimiser step (owned by the learner: shards, micro-batches, precision, sums)
    evaluate(tasks)        the kind's scores at the deployed weights
    deployed_weights()     a block inside which the model holds the method's deployed weights
    set_backbone(b)        the backbone after a fold
    log(event, **info)     an event for the run's callbacks
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .data.loaders import evaluation_loader, training_loader
from .distributed import World

if TYPE_CHECKING:
    from .data import Task
    from .kinds import TaskKind

Batch = tuple[Any, torch.Tensor]


def rows_of(inputs: Any, index: slice) -> Any:
    """Rows of a batch's inputs (a tensor or a dict of tensors)."""
    if isinstance(inputs, dict):
        return {k: v[index] for k, v in inputs.items()}
    return inputs[index]


def move_to(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


@dataclass(eq=False)
class TaskContext:
    model: nn.Module
    kind: "TaskKind"
    device: torch.device
    num_tasks: int
    scenario: str = "class-incremental"
    precision: str = "fp32"
    world: World = field(default_factory=World)
    seed: int = 0
    batch_size: int = 32
    eval_batch_size: int = 256
    progress: bool = False
    collate: Callable[[list[Any]], Any] | None = None
    task: "Task | None" = None
    kind_parameters: list[nn.Parameter] = field(default_factory=list)
    # the learner's services
    step_fn: Callable[..., float] | None = None
    evaluate_fn: Callable[[list["Task"]], tuple[list[float], float]] | None = None
    deployed_fn: Callable[[], AbstractContextManager] | None = None
    emit_fn: Callable[..., None] | None = None

    # ---- data ---------------------------------------------------------------------------------------------
    def loader(self, dataset: Dataset, batch_size: int, shuffle: bool = False, epoch: int = 0) -> DataLoader:
        """Training batches are shuffled (seeded per run, task and epoch). Evaluation and Fisher batches, whose
        results do not depend on the order, go by input length where the data has lengths (little padding)."""
        if shuffle:
            return training_loader(dataset, batch_size, self.collate, self.seed, self.task.index if self.task else 0,
                                   epoch)
        return evaluation_loader(dataset, batch_size, self.collate)

    def batches(self, dataset: Dataset, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """This process's rows of the batches of `dataset` (or of a fixed random subset of `limit` examples), on
        the device, with the kind's targets (classification: labels relative to the task's head block)."""
        if limit is not None and limit < len(dataset):
            chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit]
            dataset = Subset(dataset, sorted(chosen.tolist()))
            lengths = getattr(dataset.dataset, "lengths", None)
            if lengths is not None:
                dataset.lengths = [lengths[i] for i in dataset.indices]
        for inputs, targets in self.loader(dataset, batch_size):
            inputs, targets = self.own_rows(inputs, targets)
            if not len(targets):
                continue
            self.log("local_batch", task=self.task.index)
            yield move_to(inputs, self.device), self.kind.targets(self.task, targets).to(self.device)

    def own_rows(self, inputs: Any, targets: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """This process's rows of a batch (all of them for a single process)."""
        if self.world.size == 1:
            return inputs, targets
        rows = self.world.shard(len(targets))
        return rows_of(inputs, rows), targets[rows]

    def to_device(self, inputs: Any) -> Any:
        return move_to(inputs, self.device)

    def autocast(self):
        """bf16 autocast for forward passes when precision is bf16 (the Fisher pass stays in fp32)."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # ---- sums over processes ------------------------------------------------------------------------------
    def sum_scalar(self, value: float) -> float:
        if self.world.size == 1:
            return value
        return float(self.world.sum_(torch.tensor(value, dtype=torch.float64, device=self.device)))

    def summed(self, tensor: torch.Tensor) -> torch.Tensor:
        """A CPU statistic summed over every process (through the device: NCCL sums CUDA tensors only)."""
        if self.world.size == 1:
            return tensor
        return self.world.sum_(tensor.to(self.device)).cpu()

    def mean_over_processes(self, per_process_means: dict[str, torch.Tensor], local: int,
                            total: int) -> dict[str, torch.Tensor]:
        """Global mean from each process's mean over its `local` of `total` examples: Σ_r local_r · mean_r / total."""
        if self.world.size == 1:
            return per_process_means
        return {k: self.world.sum_(v * local) / total for k, v in per_process_means.items()}

    # ---- the learner's services ---------------------------------------------------------------------------
    def optimiser_step(self, optimizer: torch.optim.Optimizer, batch: Batch,
                       objective_of: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
                       advice: Callable[[], str]) -> float:
        """One optimiser step on the batch's mean objective (see `ContinualLearner.optimiser_step`)."""
        return self.step_fn(optimizer, batch, objective_of, advice)

    def evaluate(self, tasks: list["Task"]) -> tuple[list[float], float]:
        return self.evaluate_fn(tasks)

    def deployed_weights(self) -> AbstractContextManager:
        return self.deployed_fn() if self.deployed_fn is not None else nullcontext()

    def set_backbone(self, backbone: nn.Module) -> None:
        """The backbone after a fold (PEFT's merge returns the plain model)."""
        self.model.backbone = backbone

    def log(self, event: str, **info: Any) -> None:
        if self.emit_fn is not None:
            self.emit_fn(event, **info)
