"""The task loop. The learner owns the loop, the optimiser step, checkpoints and the score matrix; every part gets
the run's `TaskContext` (context.py), never the learner. What a task is (targets, losses, scores, head rows) is the
task kind's (kinds/); method-specific work happens in the method's hooks.

    for each task t:
        context.kind_parameters = kind.begin_task(context)   head rows (classification)
        method.begin_task(context, task)                     adapter / anchor, optimiser
        for each epoch, batch: method.train_step(context, batch)
        record = method.end_task(context, task)              Fisher → α → fold-in
        row t of R ← kind.evaluate(context, tasks 0..t) at the deployed weights
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import rng_state, save_checkpoint, set_rng_state
from .context import TaskContext, move_to, rows_of
from .distributed import World
from .errors import TrainingDiverged
from .kinds import ClassificationKind, TaskKind

if TYPE_CHECKING:
    from .data import Task, TaskStream
    from .methods import Method

Batch = tuple[Any, torch.Tensor]


@dataclass
class LearnerResult:
    accuracy_matrix: list[list[float | None]]  # percent; R[t][i], None where i > t
    acc_all_seen: list[float]  # percent; accuracy on all seen classes' test data after each task
    task_logs: list[dict[str, Any]] = field(default_factory=list)
    reference_base: dict[str, float] = field(default_factory=dict)  # the pretrained model's reference scores


class ContinualLearner:
    """Runs a method over a task stream. Hooks are the method's; `callbacks` get (event, learner, info)."""

    def __init__(
        self,
        model: nn.Module,
        method: "Method",
        stream: "TaskStream",
        *,
        epochs: int,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        device: torch.device,
        progress: bool = True,
        callbacks: list[Callable[[str, "ContinualLearner", dict[str, Any]], None]] | None = None,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 0,
        grad_accumulation: int = 1,
        precision: str = "fp32",
        world: World | None = None,
        kind: TaskKind | None = None,
    ) -> None:
        model = model.to(device)
        self.method = method
        self.stream = stream
        self.epochs, self.batch_size, self.eval_batch_size = epochs, batch_size, eval_batch_size
        self.seed = seed
        self.device = device
        self.progress = progress
        self.callbacks = callbacks or []
        self.task: Task | None = None
        self.step = 0
        # Checkpoints (docs/reliability.md): after every task and every `checkpoint_every` optimiser steps.
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.checkpoint_meta_fn: Callable[[], dict[str, Any]] = dict  # extra JSON-able facts (config, versions)
        self.result = LearnerResult([], [])
        self._head_at_task_start: list[int] = []
        self.grad_accumulation, self.precision = grad_accumulation, precision
        self.world = world or World()
        self.kind = kind if kind is not None else ClassificationKind()
        self.context = TaskContext(
            model, self.kind, device, len(stream.tasks), stream.scenario, precision, self.world, seed,
            batch_size, eval_batch_size, progress, stream.collate, step_fn=self.optimiser_step,
            evaluate_fn=self.evaluate, deployed_fn=self.deployed_weights, emit_fn=self._emit)

    @property
    def model(self) -> nn.Module:
        """The model being trained (the context's: a fold replaces its backbone there)."""
        return self.context.model

    @model.setter
    def model(self, model: nn.Module) -> None:
        self.context.model = model

    # ---- data (the context's; here for scripts that hold a learner) -------------------------------------------
    def loader(self, dataset: Dataset, batch_size: int, shuffle: bool = False, epoch: int = 0) -> DataLoader:
        self.context.collate = self.stream.collate
        return self.context.loader(dataset, batch_size, shuffle, epoch)

    def local_batches(self, dataset: Dataset, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        return self.context.batches(dataset, batch_size, limit)

    # ---- one optimiser step: shards, micro-batches, precision, cross-process sums ------------------------------
    def batch_parts(self, batch: Batch) -> list[tuple[Batch, float]]:
        """This process's rows of a global batch, cut into `grad_accumulation` micro-batches, each with its share
        of the global batch (the weight of its mean loss in the global mean)."""
        inputs, labels = batch
        total = len(labels)
        if self.world.size == 1 and self.grad_accumulation == 1:
            return [(batch, 1.0)]
        inputs, labels = self.context.own_rows(inputs, labels)
        parts = []
        for chunk in torch.arange(len(labels)).tensor_split(self.grad_accumulation):
            if len(chunk):
                index = slice(int(chunk[0]), int(chunk[-1]) + 1)
                parts.append(((rows_of(inputs, index), labels[index]), len(chunk) / total))
        return parts

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Sum the gradients over processes (each already weighted by its share of the global batch)."""
        if self.world.size == 1:
            return
        for p in parameters:
            if p.grad is None:  # this process had no rows in the batch
                p.grad = torch.zeros_like(p)
            self.world.sum_(p.grad)

    def optimiser_step(self, optimizer: torch.optim.Optimizer, batch: Batch,
                       objective_of: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
                       advice: Callable[[], str]) -> float:
        """One optimiser step on the batch's mean objective; returns the mean task loss to report.

        `objective_of(part)` gives (objective to minimise, task loss) on a part of the batch: this process's shard
        (several processes) cut into `grad_accumulation` micro-batches. Each part's gradient is weighted by its
        share of the global batch and the parts' gradients are summed (across processes too) before the step. A
        non-finite objective stops the run naming the task, the step and `advice()`."""
        optimizer.zero_grad(set_to_none=True)
        reported = 0.0
        for part, weight in self.batch_parts(batch):
            with self.context.autocast():
                objective, loss = objective_of(part)
            if not torch.isfinite(objective):
                raise TrainingDiverged(f"non-finite loss at task {self.task.index + 1}, step {self.step}; {advice()}")
            (objective if weight == 1.0 else objective * weight).backward()
            reported += loss.item() * weight
        self.sum_gradients([p for group in optimizer.param_groups for p in group["params"]])
        optimizer.step()
        return self.context.sum_scalar(reported)

    # ---- evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, tasks: list["Task"]) -> tuple[list[float], float]:
        """The kind's score (classification: accuracy, %) per task and over all their test data, at the deployed
        weights."""
        self.model.eval()
        with self.deployed_weights():
            return self.kind.evaluate(self.context, tasks)

    @torch.no_grad()
    def reference_scores(self) -> dict[str, float]:
        """The kind's scores on the stream's held-out reference data at the deployed weights ({} without any)."""
        if getattr(self.stream, "reference", None) is None:
            return {}
        self.model.eval()
        with self.deployed_weights():
            return self.kind.reference_scores(self.context, self.stream.reference)

    @contextmanager
    def deployed_weights(self) -> Iterator[None]:
        """Swap in the method's deployed weights (if it has its own) for evaluation, then restore."""
        weights = self.method.deployed_weights()
        if not weights:
            yield
            return
        params = dict(self.model.backbone.named_parameters())
        saved = {k: params[k].detach().clone() for k in weights}
        with torch.no_grad():
            for k, w in weights.items():
                params[k].copy_(w)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, w in saved.items():
                    params[k].copy_(w)

    # ---- loop -------------------------------------------------------------------------------------------
    def _emit(self, event: str, **info: Any) -> None:
        for callback in self.callbacks:
            callback(event, self, info)

    def train_task(self, task: "Task", resume: dict[str, Any] | None = None) -> dict[str, Any]:
        """begin_task → epochs of train_step → end_task. `resume`: a checkpoint taken inside this task."""
        self.task = self.context.task = task
        self.context.collate = self.stream.collate
        self.model.train()
        self._head_at_task_start = self._head_blocks()
        self.context.kind_parameters = self.kind.begin_task(self.context)
        self.method.begin_task(self.context, task)
        losses: list[float] = []
        first_epoch, skip = 0, 0
        if resume is not None:  # same structure as when the checkpoint was taken; now its values
            self.model.load_state_dict(resume["model"])
            self.method.load_state_dict(resume["method"], self.device)
            losses = list(resume["losses"])
            first_epoch, skip = resume["position"]["epoch"], resume["position"]["batch"]
            set_rng_state(resume["rng"])
        self._emit("begin_task", task=task.index)
        steps_per_epoch = -(-len(task.train) // self.batch_size)
        bar = tqdm(total=self.epochs * steps_per_epoch, initial=first_epoch * steps_per_epoch + skip,
                   desc=f"task {task.index + 1}/{len(self.stream.tasks)}", disable=not self.progress, leave=False)
        start = time.perf_counter()
        for epoch in range(first_epoch, self.epochs if self.method.trains else 0):
            self.model.train()
            for batch_index, (inputs, labels) in enumerate(self.loader(task.train, self.batch_size, shuffle=True,
                                                                       epoch=epoch)):
                if epoch == first_epoch and batch_index < skip:
                    continue  # done before the checkpoint (the epoch's order is fixed by its seed)
                if self.stream.train_augment is not None:  # seeded per (run, task, epoch, batch): resumable
                    inputs = self.stream.train_augment(inputs, torch.Generator().manual_seed(
                        self.seed * 1_000_003 + task.index * 1009 + epoch * 100_003 + batch_index + 1))
                batch = (move_to(inputs, self.device), self.kind.targets(task, labels).to(self.device))
                loss = self.method.train_step(self.context, batch)
                losses.append(loss)
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                self._emit("train_step", task=task.index, epoch=epoch, step=self.step, loss=loss)
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint({"task": task.index, "epoch": epoch, "batch": batch_index + 1,
                                          "done": False}, losses)
        bar.close()
        self.model.eval()
        log = {"task": task.index,
               "train_loss_last_epoch": sum(losses[-steps_per_epoch:]) / steps_per_epoch if losses else None,
               "train_time_s": time.perf_counter() - start}
        log.update(self.method.end_task(self.context, task))
        self._emit("end_task", task=task.index, log=log)
        return log

    def run(self, resume: dict[str, Any] | None = None) -> LearnerResult:
        """All tasks; after each, row t of the accuracy matrix. `resume`: a checkpoint's state to continue from."""
        tasks = self.stream.tasks
        self.result = LearnerResult([], [])
        first, inside = 0, None
        if resume is not None:
            self.result = LearnerResult(**resume["result"])
            self.step = resume["step"]
            for size in resume["head_blocks"]:  # (classification's head blocks; other kinds have none)
                self.model.head.add_block(size)
            self.model.to(self.device)
            if resume["position"]["done"]:
                self.model.load_state_dict(resume["model"])
                self.method.load_state_dict(resume["method"], self.device)
                set_rng_state(resume["rng"])
                first = resume["position"]["task"] + 1
            else:
                first, inside = resume["position"]["task"], resume
        if resume is None:  # the pretrained model's scores on the reference data (a resume keeps the saved ones)
            self.result.reference_base = self.reference_scores()
        for t in range(first, len(tasks)):
            log = self.train_task(tasks[t], inside)
            inside = None
            started = time.perf_counter()
            per_task, overall = self.evaluate(tasks[: t + 1])
            log["eval_s"] = time.perf_counter() - started
            reference = self.reference_scores()
            if reference:
                log.update(reference)
                log.update({f"{key}_base": value for key, value in self.result.reference_base.items()})
            self.result.accuracy_matrix.append(per_task + [None] * (len(tasks) - t - 1))
            self.result.acc_all_seen.append(overall)
            self.result.task_logs.append(log)
            self._emit("evaluated", task=t, accuracies=per_task, acc_all_seen=overall)
            self.save_checkpoint({"task": t, "epoch": self.epochs, "batch": 0, "done": True}, [])
        return self.result

    def _head_blocks(self) -> list[int]:
        """The head's block sizes (classification), for a checkpoint; [] for a model without a head."""
        head = getattr(self.model, "head", None)
        return [block.out_features for block in head.blocks] if head is not None else []

    # ---- checkpoints ------------------------------------------------------------------------------------
    def save_checkpoint(self, position: dict[str, Any], losses: list[float]) -> None:
        """Everything needed to continue from `position` bit-identically (see checkpoint.py)."""
        if self.checkpoint_dir is None:
            return
        head = self._head_blocks()
        state = {
            **self.checkpoint_meta_fn(),
            "position": position,
            "step": self.step,
            "result": dataclasses.asdict(self.result),
            "losses": losses,
            "head_blocks": head if position["done"] else self._head_at_task_start,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "rng": rng_state(),
        }
        save_checkpoint(self.checkpoint_dir, state, before_commit=lambda: self._emit("checkpoint_staged"))
        self._emit("checkpoint_saved", position=position)
