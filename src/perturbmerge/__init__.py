"""perturbmerge: continual learning by Perturb-and-Merge (arXiv 2505.22389)."""
from __future__ import annotations

__version__ = "0.1.0"

from .config import FisherSettings, LoraSettings, RunConfig  # noqa: E402
from .errors import UserError  # noqa: E402
from .merge import RunningMergeState, closed_form_alpha  # noqa: E402

__all__ = ["RunConfig", "LoraSettings", "FisherSettings", "UserError", "RunningMergeState", "closed_form_alpha",
           "PerturbAndMerge", "load_tasks", "load_backbone", "ExpandingLinearHead", "training_loader",
           "evaluation_loader", "run_experiment", "resolve_config", "__version__"]


def __getattr__(name: str):
    # Heavy imports (PEFT, transformers) only when the runner is needed.
    if name in ("run_experiment", "resolve_config"):
        from . import runner

        return getattr(runner, name)
    if name in ("PerturbAndMerge", "load_tasks", "load_backbone"):
        from . import api

        return getattr(api, name)
    if name == "ExpandingLinearHead":
        from .heads import ExpandingLinearHead

        return ExpandingLinearHead
    if name in ("training_loader", "evaluation_loader"):
        from .data import loaders

        return getattr(loaders, name)
    raise AttributeError(name)
