"""Task streams and the benchmark registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import UserError, did_you_mean

SCENARIOS = ("class-incremental", "domain-incremental")


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
            f"(own data: csv:PATH or folder:PATH)"
        )
    return BENCHMARKS[name]


def class_order(num_classes: int, seed: int) -> list[int]:
    """The class order of a seed: a fixed permutation (seed 0 included), the same on every machine."""
    return np.random.RandomState(seed).permutation(num_classes).tolist()


def task_class_groups(num_classes: int, num_tasks: int, seed: int) -> list[np.ndarray]:
    """The seed's class order cut into `num_tasks` near-equal consecutive groups (class indices)."""
    if num_tasks > num_classes:
        raise UserError(f"{num_tasks} tasks need at least {num_tasks} classes, the data has {num_classes}; lower --tasks")
    return np.array_split(np.array(class_order(num_classes, seed)), num_tasks)


def class_incremental_tasks(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    class_names: list[str],
    num_tasks: int,
    seed: int,
) -> list[Task]:
    """Split classes (in the seed's order) into `num_tasks` near-equal groups; relabel to head positions."""
    groups = task_class_groups(len(class_names), num_tasks, seed)
    position = np.empty(len(class_names), dtype=np.int64)
    position[np.concatenate(groups)] = np.arange(len(class_names))
    tasks, offset = [], 0
    for index, group in enumerate(groups):
        members_train = np.isin(train_y, group)
        members_test = np.isin(test_y, group)
        for name, count in (("training", members_train.sum()), ("test", members_test.sum())):
            if count == 0:
                raise UserError(f"task {index} has no {name} samples (classes {group.tolist()}); check the data")
        tasks.append(
            Task(
                index=index,
                class_names=[class_names[c] for c in group],
                label_offset=offset,
                train=TensorDataset(train_x[members_train], torch.from_numpy(position[train_y[members_train]])),
                test=TensorDataset(test_x[members_test], torch.from_numpy(position[test_y[members_test]])),
            )
        )
        offset += len(group)
    return tasks


def joint_stream(stream: TaskStream) -> TaskStream:
    """All tasks as one: the union of their training and test data, every class in one head block
    (labels are already global head positions). For the `joint` upper bound."""
    from torch.utils.data import ConcatDataset

    first = stream.tasks[0]
    names = stream.class_names
    task = Task(0, list(names), 0, ConcatDataset([t.train for t in stream.tasks]),
                ConcatDataset([t.test for t in stream.tasks]))
    assert first.label_offset == 0
    return TaskStream(stream.benchmark, stream.scenario, stream.backbone, [task], stream.collate,
                      {**stream.info, "joint_of_tasks": len(stream.tasks)})
