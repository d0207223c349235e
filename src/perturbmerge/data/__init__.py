"""Benchmarks: a registry of task streams. Each benchmark turns (seed, number of tasks, data dir) into a
`TaskStream`: tasks with disjoint train/test data, labels already mapped to head positions."""
from __future__ import annotations

from .base import BENCHMARKS, BenchmarkSpec, Task, TaskStream, get_benchmark, register_benchmark
from . import custom, digits, glyphs, images, langid, paper, polyglot, wordnet  # noqa: F401  (registers the built-in benchmarks)

__all__ = ["BENCHMARKS", "BenchmarkSpec", "Task", "TaskStream", "get_benchmark", "register_benchmark"]
