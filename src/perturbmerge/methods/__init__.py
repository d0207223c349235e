"""Methods as recipes of small parts (docs/architecture.md):

    base.py          Method (the hooks the learner calls), common keys
    registry.py      MethodSpec, register_method (refuses a taken name), get_method, key checks
    perturbation.py  none | task_vector | gaussian, with ε, p0 and the draw stream
    task_fisher.py   the diagonal Fisher of a task (kind, logits, sample cap, mean over processes)
    merger.py        closed form | data-free (average, fixed) | sequential fold
    regulariser.py   online EWC
    head_part.py     probe, drift (drift.py), refit, prototype / LDA rows, pretrained ensemble
    task_vector.py   TaskVectorMethod: the recipe's parts run in a fixed pipeline
    sequential_merge.py, fisher_weighted.py, prototype.py   MagMax/TIES/DARE, CoFiMA/EWC, SimpleCIL/frozen-lda
    catalog.py       every built-in method, registered
"""
from __future__ import annotations

from . import catalog  # noqa: F401  (registers the built-in methods)
from .base import COMMON_KEYS, Method, divergence_advice, sum_norm_sq, total
from .catalog import Recipe, register_recipe
from .fisher_weighted import FisherWeightedMethod
from .prototype import SimpleCIL
from .registry import METHODS, MethodSpec, check_keys_apply, get_method, register_method, unused_keys
from .sequential_merge import SequentialMergeMethod
from .task_vector import TaskVectorMethod

__all__ = ["COMMON_KEYS", "METHODS", "Method", "MethodSpec", "Recipe", "TaskVectorMethod", "SequentialMergeMethod",
           "FisherWeightedMethod", "SimpleCIL", "check_keys_apply", "divergence_advice", "get_method",
           "register_method", "register_recipe", "sum_norm_sq", "total", "unused_keys"]
