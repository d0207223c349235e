"""Task kinds (kinds/base.py): classification today; a kind of your own is a `TaskKind` subclass."""
from .base import TASK_KINDS, ExampleLoss, TaskKind, register_task_kind, task_kind_for
from .causal_lm import CausalLMKind
from .classification import ClassificationKind

__all__ = ["TASK_KINDS", "CausalLMKind", "ClassificationKind", "ExampleLoss", "TaskKind", "register_task_kind", "task_kind_for"]
