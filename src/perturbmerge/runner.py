"""One run end to end: resolve config → stream → backbone + method → learner → metrics → results.json."""
from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import __version__
from .backbones import build_backbone
from .config import RunConfig, build_config, load_yaml, parse_set
from .data import get_benchmark
from .errors import UserError
from .heads import ContinualClassifier
from .io import atomic_write_json, package_versions
from .learner import ContinualLearner
from .methods import check_keys_apply, get_method
from .metrics import summarise


def resolve_config(
    overrides: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    sets: Sequence[str] = (),
) -> tuple[RunConfig, set[str]]:
    """Defaults < benchmark defaults < config file < `overrides` (e.g. CLI flags) < `--set` assignments.

    Returns the validated config and the set of keys the user gave explicitly.
    """
    user_layers: list[Mapping[str, Any]] = []
    if config_file is not None:
        user_layers.append(load_yaml(config_file))
    if overrides:
        user_layers.append({k: v for k, v in overrides.items() if v is not None})
    user_layers.append(parse_set(list(sets)))
    # The benchmark (and so its defaults) is known only after the user's layers are read.
    probe, _ = build_config([], user_layers)
    spec = get_benchmark(probe.benchmark)
    config, explicit = build_config([spec.defaults], user_layers)
    check_keys_apply(get_method(config.method), explicit)
    return config, explicit


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but no CUDA device is available; use --set device=cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _prepare_out_dir(out_dir: Path) -> bool:
    """Refuse a non-empty folder; return True if we created it (so a failed run can remove it)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"--out '{out_dir}' exists and is not a folder; choose another --out")
        if any(out_dir.iterdir()):
            raise UserError(f"output folder '{out_dir}' is not empty; choose another --out or remove it")
        created = False
    else:
        created = True
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output folder '{out_dir}' is not writable ({exc.strerror}); choose another --out") from None
    return created


def run_experiment(config: RunConfig, out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run one (benchmark, method, seed); return the results dict and write `out_dir/results.json` if given."""
    benchmark = get_benchmark(config.benchmark)
    method_spec = get_method(config.method)
    num_tasks = config.tasks or benchmark.default_tasks
    device = resolve_device(config.device)
    start = time.perf_counter()
    # Everything that can fail on bad input happens before the output folder exists.
    stream = benchmark.load(config.seed, num_tasks, config.data_dir)
    seed_everything(config.seed)
    backbone = build_backbone(stream.backbone, config.seed)
    method = method_spec.build(config, backbone.lora_targets)
    method.check_backbone(backbone.module)
    out_path = Path(out_dir) if out_dir is not None else None
    created = _prepare_out_dir(out_path) if out_path is not None else False
    try:
        model = ContinualClassifier(backbone.module, backbone.feature_dim)
        learner = ContinualLearner(
            model, method, stream, epochs=config.epochs, batch_size=config.batch_size,
            eval_batch_size=config.eval_batch_size, seed=config.seed, device=device, progress=progress,
        )
        outcome = learner.run()
        results = {
            "benchmark": config.benchmark,
            "method": config.method,
            "seed": config.seed,
            "scenario": stream.scenario,
            "num_tasks": len(stream.tasks),
            "classes_per_task": [task.class_names for task in stream.tasks],
            "backbone": backbone.description,
            "accuracy_matrix": outcome.accuracy_matrix,
            "acc_all_seen": outcome.acc_all_seen,
            **summarise(outcome.accuracy_matrix, outcome.acc_all_seen),
            "alphas": [log.get("alpha") for log in outcome.task_logs] if method.merges else None,
            "alpha_simplified": [log.get("alpha_simplified") for log in outcome.task_logs] if method.merges else None,
            "task_logs": outcome.task_logs,
            "wall_time_s": time.perf_counter() - start,
            "device": str(device),
            "config": config.to_dict(),
            "versions": {**package_versions(), "perturbmerge": __version__},
        }
        if out_path is not None:
            atomic_write_json(out_path / "results.json", results)
        return results
    except BaseException:
        if created and out_path is not None:
            shutil.rmtree(out_path, ignore_errors=True)
        raise
