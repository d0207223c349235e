"""The task loop. Method-specific work happens in the method's hooks; the learner owns data loading, the head,
evaluation and the accuracy matrix.

    for each task t:
        method.begin_task(learner, task)          adapter / anchor, optimiser
        for each epoch, batch: method.train_step(learner, batch)
        record = method.end_task(learner, task)   Fisher → α → fold-in
        row t of R ← evaluate on tasks 0..t (all seen classes compete, no task id)
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .checkpoint import rng_state, save_checkpoint, set_rng_state
from .data.loaders import evaluation_loader, training_loader
from .distributed import World
from .errors import TrainingDiverged
from .heads import ContinualClassifier

if TYPE_CHECKING:
    from .data import Task, TaskStream
    from .methods import Method

Batch = tuple[Any, torch.Tensor]


def _rows(inputs: Any, index: slice) -> Any:
    """Rows of a batch's inputs (a tensor or a dict of tensors)."""
    if isinstance(inputs, dict):
        return {k: v[index] for k, v in inputs.items()}
    return inputs[index]


def move_to(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


@dataclass
class LearnerResult:
    accuracy_matrix: list[list[float | None]]  # percent; R[t][i], None where i > t
    acc_all_seen: list[float]  # percent; accuracy on all seen classes' test data after each task
    task_logs: list[dict[str, Any]] = field(default_factory=list)


class ContinualLearner:
    """Runs a method over a task stream. Hooks are the method's; `callbacks` get (event, learner, info)."""

    def __init__(
        self,
        model: ContinualClassifier,
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
    ) -> None:
        self.model = model.to(device)
        self.method = method
        self.stream = stream
        self.epochs, self.batch_size, self.eval_batch_size = epochs, batch_size, eval_batch_size
        self.seed = seed
        self.device = device
        self.progress = progress
        self.callbacks = callbacks or []
        self.task: Task | None = None
        self.head_block = 0
        self.step = 0
        # Checkpoints (docs/reliability.md): after every task and every `checkpoint_every` optimiser steps.
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.checkpoint_meta_fn: Callable[[], dict[str, Any]] = dict  # extra JSON-able facts (config, versions)
        self.result = LearnerResult([], [])
        self._head_at_task_start: list[int] = []
        self.grad_accumulation, self.precision = grad_accumulation, precision
        self.world = world or World()

    # ---- data -------------------------------------------------------------------------------------------
    def loader(self, dataset: Dataset, batch_size: int, shuffle: bool = False, epoch: int = 0) -> DataLoader:
        """Training batches are shuffled (seeded per task and epoch). Evaluation and Fisher batches, whose results
        do not depend on the order, go by input length where the data has lengths, so dynamic padding pads little."""
        if shuffle:
            return training_loader(dataset, batch_size, self.stream.collate, self.seed,
                                   self.task.index if self.task else 0, epoch)
        return evaluation_loader(dataset, batch_size, self.stream.collate)

    def local_batches(self, dataset: Dataset, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """This process's rows of the batches of `dataset` (or of a fixed random subset of `limit` examples), on
        the device, with labels relative to the current head block (the task's own logits)."""
        if limit is not None and limit < len(dataset):
            chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit]
            dataset = Subset(dataset, sorted(chosen.tolist()))
            lengths = getattr(dataset.dataset, "lengths", None)
            if lengths is not None:
                dataset.lengths = [lengths[i] for i in dataset.indices]
        for inputs, labels in self.loader(dataset, batch_size):
            inputs, labels = self._own_rows(inputs, labels)
            if not len(labels):
                continue
            self._emit("local_batch", task=self.task.index)
            yield move_to(inputs, self.device), (labels - self.task.label_offset).to(self.device)

    def _own_rows(self, inputs: Any, labels: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """This process's rows of a batch (all of them for a single process)."""
        if self.world.size == 1:
            return inputs, labels
        rows = self.world.shard(len(labels))
        return _rows(inputs, rows), labels[rows]

    # ---- one optimiser step: shards, micro-batches, precision, cross-process sums ------------------------------
    def batch_parts(self, batch: Batch) -> list[tuple[Batch, float]]:
        """This process's rows of a global batch, cut into `grad_accumulation` micro-batches, each with its share
        of the global batch (the weight of its mean loss in the global mean)."""
        inputs, labels = batch
        total = len(labels)
        if self.world.size == 1 and self.grad_accumulation == 1:
            return [(batch, 1.0)]
        inputs, labels = self._own_rows(inputs, labels)
        parts = []
        for chunk in torch.arange(len(labels)).tensor_split(self.grad_accumulation):
            if len(chunk):
                index = slice(int(chunk[0]), int(chunk[-1]) + 1)
                parts.append(((_rows(inputs, index), labels[index]), len(chunk) / total))
        return parts

    def autocast(self):
        """bf16 autocast for forward passes when precision is bf16 (the Fisher pass stays in fp32)."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

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
            with self.autocast():
                objective, loss = objective_of(part)
            if not torch.isfinite(objective):
                raise TrainingDiverged(f"non-finite loss at task {self.task.index + 1}, step {self.step}; {advice()}")
            (objective if weight == 1.0 else objective * weight).backward()
            reported += loss.item() * weight
        self.sum_gradients([p for group in optimizer.param_groups for p in group["params"]])
        optimizer.step()
        return self.sum_scalar(reported)

    def sum_scalar(self, value: float) -> float:
        if self.world.size == 1:
            return value
        return float(self.world.sum_(torch.tensor(value, dtype=torch.float64, device=self.device)))

    def mean_over_processes(self, per_process_means: dict[str, torch.Tensor], local: int,
                            total: int) -> dict[str, torch.Tensor]:
        """Global mean from each process's mean over its `local` of `total` examples: Σ_r local_r · mean_r / total."""
        if self.world.size == 1:
            return per_process_means
        return {k: self.world.sum_(v * local) / total for k, v in per_process_means.items()}

    # ---- the model's parts that methods replace --------------------------------------------------------------
    def set_backbone(self, backbone: torch.nn.Module) -> None:
        """The backbone after a fold (PEFT's merge returns the plain model)."""
        self.model.backbone = backbone

    def set_classifier(self, classifier: Any) -> None:
        """A classifier that replaces the head's logits (RanPAC's; None: the head's own rows)."""
        self.model.classifier = classifier

    def set_ensemble(self, ensemble: Any) -> None:
        """The pretrained-backbone ensemble of the LDA head (None: none)."""
        self.model.ensemble = ensemble

    # ---- head -------------------------------------------------------------------------------------------
    def prepare_head(self, task: "Task") -> list[torch.nn.Parameter]:
        """New rows for a class-incremental task (old ones frozen); the shared block for domain-incremental."""
        head = self.model.head
        if self.stream.scenario == "class-incremental" or not len(head.blocks):
            head.add_block(task.num_classes)
        block = head.blocks[-1]
        block.requires_grad_(True)
        self.head_block = len(head.blocks) - 1
        return list(block.parameters())

    def class_feature_sums(self, task: "Task") -> tuple[torch.Tensor, torch.Tensor]:
        """Per row of the current head block: the sum of the task's training features (float64) and their count,
        over every process's shard, on the backbone as it is now (eval mode)."""
        return self.class_feature_statistics(task, second_moment=False)[:2]

    @torch.no_grad()
    def class_feature_statistics(self, task: "Task", second_moment: bool = True,
                                 features_of: Callable[[Any], torch.Tensor] | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`class_feature_sums` and (with `second_moment`) Σ_x x xᵀ [d, d] of the same features (float64);
        `features_of` replaces the backbone as the feature map."""
        self.model.eval()
        block = self.model.head.blocks[self.head_block]
        sums = torch.zeros(block.out_features, block.in_features, dtype=torch.float64, device=self.device)
        counts = torch.zeros(block.out_features, dtype=torch.float64, device=self.device)
        moment = (torch.zeros(block.in_features, block.in_features, dtype=torch.float64, device=self.device)
                  if second_moment else None)
        for inputs, labels in self.local_batches(task.train, self.eval_batch_size):
            features = (features_of or self.model.backbone)(inputs).double()
            sums.index_add_(0, labels, features)
            counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
            if moment is not None:
                moment.addmm_(features.T, features)
        return self.world.sum_(sums), self.world.sum_(counts), None if moment is None else self.world.sum_(moment)

    def fit_head(self, task: "Task", epochs: int, lr: float, weight_decay: float, tag: int) -> list[float]:
        """Train the current head block alone on frozen features of the backbone as it is now (eval mode), with
        the masked loss (the task's own logits), a fresh AdamW, and shuffles seeded apart from the main training
        (`tag`); returns the mean loss per epoch."""
        block = self.model.head.blocks[self.head_block]
        block.requires_grad_(True)
        optimizer = torch.optim.AdamW(block.parameters(), lr=lr, weight_decay=weight_decay)
        self.model.eval()
        losses = []
        for epoch in range(epochs):
            total, count = 0.0, 0
            for inputs, labels in self.loader(task.train, self.batch_size, shuffle=True, epoch=tag * 1000 + epoch):
                with torch.no_grad():
                    features = self.model.backbone(move_to(inputs, self.device))
                loss = torch.nn.functional.cross_entropy(block(features), (labels - task.label_offset).to(self.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * len(labels), count + len(labels)
            losses.append(total / count)
        return losses

    def task_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The current task's logits only (the masked loss of pm-method.md §5)."""
        return self.model.head.block_logits(features, self.head_block)

    # ---- evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, tasks: list["Task"]) -> tuple[list[float], float]:
        """Accuracy (%) per task and over all their test data; all seen classes compete."""
        self.model.eval()
        with self.deployed_weights():
            return self._evaluate(tasks)

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

    def _evaluate(self, tasks: list["Task"]) -> tuple[list[float], float]:
        per_task, correct_all, total_all = [], 0, 0
        for task in tasks:
            correct, total = 0, 0
            for inputs, labels in self.loader(task.test, self.eval_batch_size):
                inputs, labels = self._own_rows(inputs, labels)
                if not len(labels):
                    continue
                with self.autocast():
                    predictions = self.model(move_to(inputs, self.device)).argmax(-1).cpu()
                correct += int((predictions == labels).sum())
                total += int(labels.numel())
            if self.world.size > 1:  # every example counted once, whatever the shard sizes
                correct, total = (int(v) for v in self.world.sum_(torch.tensor([correct, total], device=self.device)))
            per_task.append(100.0 * correct / total)
            correct_all, total_all = correct_all + correct, total_all + total
        return per_task, 100.0 * correct_all / total_all

    # ---- loop -------------------------------------------------------------------------------------------
    def _emit(self, event: str, **info: Any) -> None:
        for callback in self.callbacks:
            callback(event, self, info)

    def train_task(self, task: "Task", resume: dict[str, Any] | None = None) -> dict[str, Any]:
        """begin_task → epochs of train_step → end_task. `resume`: a checkpoint taken inside this task."""
        self.task = task
        self.model.train()
        self._head_at_task_start = [block.out_features for block in self.model.head.blocks]
        self.method.begin_task(self, task)
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
                batch = (move_to(inputs, self.device), (labels - task.label_offset).to(self.device))
                loss = self.method.train_step(self, batch)
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
        log.update(self.method.end_task(self, task))
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
            for size in resume["head_blocks"]:
                self.model.head.add_block(size)
            self.model.to(self.device)
            if resume["position"]["done"]:
                self.model.load_state_dict(resume["model"])
                self.method.load_state_dict(resume["method"], self.device)
                set_rng_state(resume["rng"])
                first = resume["position"]["task"] + 1
            else:
                first, inside = resume["position"]["task"], resume
        for t in range(first, len(tasks)):
            log = self.train_task(tasks[t], inside)
            inside = None
            started = time.perf_counter()
            per_task, overall = self.evaluate(tasks[: t + 1])
            log["eval_s"] = time.perf_counter() - started
            self.result.accuracy_matrix.append(per_task + [None] * (len(tasks) - t - 1))
            self.result.acc_all_seen.append(overall)
            self.result.task_logs.append(log)
            self._emit("evaluated", task=t, accuracies=per_task, acc_all_seen=overall)
            self.save_checkpoint({"task": t, "epoch": self.epochs, "batch": 0, "done": True}, [])
        return self.result

    # ---- checkpoints ------------------------------------------------------------------------------------
    def save_checkpoint(self, position: dict[str, Any], losses: list[float]) -> None:
        """Everything needed to continue from `position` bit-identically (see checkpoint.py)."""
        if self.checkpoint_dir is None:
            return
        head = [block.out_features for block in self.model.head.blocks]
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
