"""Task streams and the benchmark registry."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import UserError, did_you_mean

SCENARIOS = ("class-incremental", "domain-incremental", "task-incremental")  # task: causal-LM tasks


@dataclass
class Task:
    """One step of the stream. Labels in `train`/`test` are global head positions; in class-incremental
    streams task t owns positions [label_offset, label_offset + num_classes)."""

    index: int
    class_names: list[str]
    label_offset: int
    train: Dataset
    test: Dataset

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class TaskStream:
    benchmark: str
    scenario: str
    backbone: str
    tasks: list[Task]
    collate: Callable[[list[Any]], Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # (training inputs, generator) -> augmented inputs; applied to training batches only (data.augment)
    train_augment: Callable[[Any, torch.Generator], Any] | None = None
    kind: str = "classification"  # the task kind (kinds/) that reads these tasks
    reference: Any = None  # held-out data no task trains on, scored after every task (causal LM: general NLL)

    @property
    def class_names(self) -> list[str]:
        if self.scenario == "domain-incremental":
            return self.tasks[0].class_names
        return [name for task in self.tasks for name in task.class_names]


@dataclass(frozen=True)
class LoadRequest:
    """What a benchmark loader needs: the run seed (class order), task count, data folder, the backbone whose
    input format to produce (e.g. its tokenizer), and the `data.*` settings."""

    seed: int
    num_tasks: int
    data_dir: str | None
    backbone: str
    data: Any  # config.DataSettings
    progress: bool = True  # progress bars for slow loading (e.g. decoding images)


@dataclass(frozen=True)
class BenchmarkSpec:
    """A named benchmark: how to load it, which inputs it yields, and the config defaults that suit it."""

    name: str
    description: str
    scenario: str
    backbone: str  # default backbone; the config key `backbone` may pick another of the same modality
    modality: str  # "vector", "text" or "image"
    default_tasks: int
    load: Callable[[LoadRequest], TaskStream]
    defaults: dict[str, Any] = field(default_factory=dict)
    data_keys: frozenset[str] = frozenset()  # the `data.*` config keys this benchmark reads
    sources: tuple[str, ...] = ()  # data sets it needs (`perturbmerge data fetch ...`)


BENCHMARKS: dict[str, BenchmarkSpec] = {}
CUSTOM_PREFIXES: dict[str, Callable[[str], BenchmarkSpec]] = {}  # "csv" -> spec factory for "csv:PATH"


def register_benchmark(spec: BenchmarkSpec) -> BenchmarkSpec:
    if spec.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {spec.scenario}")
    BENCHMARKS[spec.name] = spec
    return spec


def get_benchmark(name: str) -> BenchmarkSpec:
    prefix, sep, rest = name.partition(":")
    if sep and prefix in CUSTOM_PREFIXES:
        return CUSTOM_PREFIXES[prefix](rest)
    if name not in BENCHMARKS:
        raise UserError(
            f"unknown benchmark '{name}'{did_you_mean(name, BENCHMARKS)}; `perturbmerge benchmarks` lists them "
            f"(own data: csv:PATH, jsonl:PATH or folder:PATH)"
        )
    return BENCHMARKS[name]


def class_order(num_classes: int, seed: int) -> list[int]:
    """The class order of a seed: a fixed permutation (seed 0 included), the same on every machine."""
    return np.random.RandomState(seed).permutation(num_classes).tolist()


def task_class_groups(num_classes: int, num_tasks: int, seed: int, order: list[int] | None = None) -> list[np.ndarray]:
    """The class order (`order`, else the seed's) cut into `num_tasks` near-equal consecutive groups."""
    if num_tasks > num_classes:
        raise UserError(f"{num_tasks} tasks need at least {num_tasks} classes, the data has {num_classes}; lower --tasks")
    return np.array_split(np.array(class_order(num_classes, seed) if order is None else order), num_tasks)


def tasks_from_groups(
    groups: list[np.ndarray],
    class_names: list[str],
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    make_dataset: Callable[[str, np.ndarray, np.ndarray], Dataset],
) -> list[Task]:
    """Class-incremental tasks, one per group of class indices; labels become global head positions.

    `make_dataset(split, indices, head_positions)` builds the 'train' or 'test' dataset of the examples at
    `indices` (positions in that split's label array, in their original order).
    """
    position = np.empty(len(class_names), dtype=np.int64)
    position[np.concatenate(groups)] = np.arange(len(class_names))
    tasks, offset = [], 0
    for index, group in enumerate(groups):
        datasets = []
        for split, labels in (("train", train_labels), ("test", test_labels)):
            picks = np.flatnonzero(np.isin(labels, group))
            if len(picks) == 0:
                raise UserError(f"task {index} has no {split} samples (classes {group.tolist()}); check the data")
            datasets.append(make_dataset(split, picks, position[labels[picks]]))
        tasks.append(Task(index, [class_names[c] for c in group], offset, *datasets))
        offset += len(group)
    return tasks


def class_incremental_tasks(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    class_names: list[str],
    num_tasks: int,
    seed: int,
) -> list[Task]:
    """Tensor data split by class (in the seed's order) into `num_tasks` near-equal groups."""
    inputs = {"train": train_x, "test": test_x}
    return tasks_from_groups(
        task_class_groups(len(class_names), num_tasks, seed), class_names, train_y, test_y,
        lambda split, picks, positions: TensorDataset(inputs[split][picks], torch.from_numpy(positions)),
    )


def joint_stream(stream: TaskStream) -> TaskStream:
    """All tasks as one: the union of their training and test data, every class in one head block
    (labels are already global head positions). For the `joint` reference."""
    from torch.utils.data import ConcatDataset

    from .completions import CompletionDataset

    first = stream.tasks[0]
    names = stream.class_names
    if isinstance(first.train, CompletionDataset):  # causal-LM tasks: one task of every pair, each scored as before
        train = CompletionDataset.concatenate([t.train for t in stream.tasks])
        test = CompletionDataset.concatenate([t.test for t in stream.tasks])
        names = ["+".join(t.class_names[0] for t in stream.tasks)]
    else:
        train, test = (ConcatDataset([t.train for t in stream.tasks]), ConcatDataset([t.test for t in stream.tasks]))
    task = Task(0, list(names), 0, train, test)
    assert first.label_offset == 0
    # the rest of the stream (collate, augmentation, kind, the held-out general set) stays as it was
    return replace(stream, tasks=[task], info={**stream.info, "joint_of_tasks": len(stream.tasks)})


GENERIC_DATA_KEYS = frozenset({"validation_fraction"})  # data.* keys every benchmark accepts
VALIDATION_SEED = 0  # fixed: the validation split does not change with the run seed


def _labels_and_subset(dataset: Dataset) -> tuple[torch.Tensor, Callable[[torch.Tensor], Dataset]]:
    """The dataset's labels, and a function that builds the sub-dataset at given indices (same type)."""
    from .completions import CompletionDataset
    from .text import TokenizedDataset

    if isinstance(dataset, CompletionDataset):  # one group: the validation share of the task's pairs
        return torch.zeros(len(dataset), dtype=torch.long), lambda idx: dataset.subset(idx.tolist())
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1], lambda idx: TensorDataset(*(t[idx] for t in dataset.tensors))
    if isinstance(dataset, TokenizedDataset):
        return dataset.labels, lambda idx: TokenizedDataset([dataset.ids[i] for i in idx.tolist()], dataset.labels[idx])
    raise TypeError(f"cannot split a {type(dataset).__name__} into train and validation")


def validation_stream(stream: TaskStream, fraction: float) -> TaskStream:
    """Carve a validation split from each task's training data — round(fraction·n_c), at least 1 and at most
    n_c − 1, of every class c, chosen by a fixed seed — and make it the task's evaluation data. The test split
    is dropped, so tuning on this stream never reads it."""

    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    tasks = []
    for task in stream.tasks:
        labels, subset = _labels_and_subset(task.train)
        held_out = []
        for label in labels.unique(sorted=True).tolist():
            members = torch.nonzero(labels == label).flatten()
            if len(members) < 2:
                raise UserError(f"task {task.index + 1}: class at head position {label} has {len(members)} training "
                                f"example(s), too few to carve a validation split; set data.validation_fraction=0")
            count = min(max(1, round(fraction * len(members))), len(members) - 1)
            held_out.append(members[torch.randperm(len(members), generator=generator)[:count]])
        validation = torch.cat(held_out).sort().values
        keep = torch.ones(len(labels), dtype=torch.bool)
        keep[validation] = False
        tasks.append(replace(task, train=subset(torch.nonzero(keep).flatten()), test=subset(validation)))
    return replace(stream, tasks=tasks, info={**stream.info, "evaluated_on": f"validation ({fraction})"})
