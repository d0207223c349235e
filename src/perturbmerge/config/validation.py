"""Range and consistency checks of a whole configuration; each failure is one line naming the key and the fix."""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import typing
from typing import Any, Literal

from ..errors import UserError
from .settings import RunConfig, _coerce


MAX_BATCH = 1 << 20  # a larger batch is a typo (1e12), not a setting


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def check_choices(settings: Any, prefix: str = "") -> None:
    """Every Literal-typed key holds one of its values (also for a RunConfig built in Python)."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value, annotation = getattr(settings, f.name), hints[f.name]
        if dataclasses.is_dataclass(annotation):
            check_choices(value, prefix + f.name + ".")
        elif typing.get_origin(annotation) is Literal:
            _coerce(prefix + f.name, value, annotation)


def validate(c: RunConfig) -> None:
    """Range checks; each failure is one line with the fix."""
    check_choices(c)
    finite = math.isfinite
    _require(c.data.train_per_class is None or c.data.train_per_class >= 2,
             f"data.train_per_class must be >= 2, got {c.data.train_per_class}; e.g. --set data.train_per_class=200")
    _require(c.data.test_per_class is None or c.data.test_per_class >= 1,
             f"data.test_per_class must be >= 1, got {c.data.test_per_class}; e.g. --set data.test_per_class=100")
    _require(0 <= c.seed < 2**32, f"seed must be in [0, 2**32 - 1] (NumPy's seed range), got {c.seed}")
    _require(c.tasks is None or c.tasks >= 1, f"tasks must be >= 1, got {c.tasks}")
    _require(not c.log.tensorboard or importlib.util.find_spec("tensorboard") is not None,
             "log.tensorboard=true needs the tensorboard package: pip install tensorboard (or set "
             "log.tensorboard=false)")
    _require(c.epochs >= 1, f"epochs must be >= 1, got {c.epochs}; e.g. --set epochs=5")
    _require(c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}; e.g. --set batch_size=32")
    _require(c.batch_size <= MAX_BATCH, f"batch_size must be <= {MAX_BATCH:,} (examples per optimiser step), got "
                                        f"{c.batch_size:,}; e.g. --set batch_size=32")
    _require(c.eval_batch_size <= MAX_BATCH, f"eval_batch_size must be <= {MAX_BATCH:,}, got {c.eval_batch_size:,}")
    _require(c.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {c.eval_batch_size}")
    _require(finite(c.lr) and c.lr > 0, f"lr must be a positive number, got {c.lr}; e.g. --set lr=1e-3")
    _require(finite(c.head_lr) and c.head_lr > 0, f"head_lr must be a positive number, got {c.head_lr}; e.g. --set head_lr=1e-2")
    _require(finite(c.weight_decay) and c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}")
    _require(finite(c.epsilon) and c.epsilon >= 0, f"epsilon must be a finite number >= 0, got {c.epsilon}; the paper uses 0.5")
    _require(0.0 <= c.p0 <= 1.0, f"p0 must be in [0, 1], got {c.p0}; the paper uses 1/3")
    _require(0.0 <= c.fixed_alpha <= 1.0, f"fixed_alpha must be in [0, 1], got {c.fixed_alpha}")
    _require(c.device == "auto" or c.device.split(":")[0] in ("cpu", "cuda", "mps"),
             f"device must be auto, cpu, cuda[:N] or mps, got '{c.device}'")
    _require(c.lora.rank >= 1, f"lora.rank must be >= 1, got {c.lora.rank}; e.g. --set lora.rank=8")
    _require(c.lora.rank <= 65536, f"lora.rank must be <= 65536 (a rank above a layer's width adds nothing), got "
                                   f"{c.lora.rank}; e.g. --set lora.rank=8")
    _require(finite(c.lora.alpha) and 0 < c.lora.alpha <= 1e6 * c.lora.rank,
             f"lora.alpha must be in (0, 1e6 × lora.rank] (the LoRA scale alpha/rank multiplies every update), "
             f"got {c.lora.alpha}; e.g. --set lora.alpha=16")
    _require(0.0 <= c.lora.dropout < 1.0, f"lora.dropout must be in [0, 1), got {c.lora.dropout}")
    _require(c.lora.targets is None or len(c.lora.targets) > 0, "lora.targets must name at least one module, e.g. --set lora.targets=key,value")
    _require(c.fisher.max_samples is None or c.fisher.max_samples >= 1, f"fisher.max_samples must be >= 1 or null, got {c.fisher.max_samples}")
    _require(0.0 < c.data.test_fraction < 1.0,
             f"data.test_fraction must be in (0, 1), got {c.data.test_fraction}; e.g. --set data.test_fraction=0.2")
    _require(c.head.drift == "none" or ((c.head.kind == "lda" or (c.head.kind, c.head.drift) == ("fecam", "linear"))
                                        and c.alpha_granularity == "model"),
             f"head.drift={c.head.drift} needs head.kind=lda (or fecam with drift=linear) and alpha_granularity=model; "
             f"set them or remove head.drift")
    _require(finite(c.head.drift_ridge) and c.head.drift_ridge > 0,
             f"head.drift_ridge must be > 0, got {c.head.drift_ridge}; e.g. --set head.drift_ridge=3")
    _require(finite(c.head.frozen_weight) and c.head.frozen_weight >= 0,
             f"head.frozen_weight must be >= 0, got {c.head.frozen_weight}; e.g. --set head.frozen_weight=1")
    _require(c.head.frozen_weight == 0 or c.head.kind == "lda",
             "head.frozen_weight needs head.kind=lda; set it or remove head.frozen_weight")
    _require(finite(c.head.shrinkage) and 0.0 <= c.head.shrinkage <= 1.0,
             f"head.shrinkage must be in [0, 1], got {c.head.shrinkage}; e.g. --set head.shrinkage=0.1")
    _require(c.head.rp_dim is None or c.head.rp_dim >= 1,
             f"head.rp_dim must be >= 1, got {c.head.rp_dim}; e.g. --set head.rp_dim=2048")
    _require(c.head.probe_epochs >= 0 and c.head.refit_epochs >= 0 and c.head.align_epochs >= 0,
             "head.probe_epochs, head.refit_epochs and head.align_epochs must be >= 0; 0 turns them off")
    _require(c.head.align_epochs == 0 or c.head.kind == "linear",
             f"head.align_epochs re-trains the linear head's rows; with head.kind={c.head.kind} there are none to "
             f"align: set head.kind=linear or remove head.align_epochs")
    _require(c.head.align_samples >= 2, f"head.align_samples must be >= 2, got {c.head.align_samples}; e.g. 256")
    cl = c.continual_lora
    _require(finite(cl.inflora_threshold) and 0.0 < cl.inflora_threshold <= 1.0,
             f"continual_lora.inflora_threshold must be in (0, 1], got {cl.inflora_threshold}; e.g. 0.95")
    _require(finite(cl.olora_orthogonal) and cl.olora_orthogonal >= 0 and finite(cl.olora_l2) and cl.olora_l2 >= 0,
             "continual_lora.olora_orthogonal and continual_lora.olora_l2 must be finite and >= 0; e.g. 0.5 and 0")
    _require(c.alpha_granularity == "model" or c.alpha_rule in ("closed_form", "simplified"),
             f"alpha_granularity=module needs alpha_rule closed_form or simplified, got '{c.alpha_rule}'")
    _require(1 <= c.grad_accumulation <= c.batch_size,
             f"grad_accumulation must be in [1, batch_size={c.batch_size}], got {c.grad_accumulation}")
    _require(c.checkpoint.every_steps >= 0,
             f"checkpoint.every_steps must be >= 0, got {c.checkpoint.every_steps}; 0 checkpoints only after each task")
    _require(0.0 <= c.data.validation_fraction < 1.0,
             f"data.validation_fraction must be in [0, 1), got {c.data.validation_fraction}; "
             f"e.g. --set data.validation_fraction=0.2 (0 evaluates on the test split)")
    _require(c.data.class_order is None or len(set(c.data.class_order)) == len(c.data.class_order),
             "data.class_order names a class twice; list each class once")
    _require(finite(c.task_merge.lam) and c.task_merge.lam >= 0, f"task_merge.lam must be >= 0, got {c.task_merge.lam}")
    _require(0.0 < c.task_merge.keep <= 1.0, f"task_merge.keep must be in (0, 1], got {c.task_merge.keep}; e.g. 0.2")
    _require(0.0 <= c.task_merge.drop < 1.0, f"task_merge.drop must be in [0, 1), got {c.task_merge.drop}; e.g. 0.5")
    _require(finite(c.ewc_lambda) and c.ewc_lambda >= 0, f"ewc_lambda must be >= 0, got {c.ewc_lambda}")
    _require(c.fisher.batch_size >= 1, f"fisher.batch_size must be >= 1, got {c.fisher.batch_size}")
