"""One run end to end: resolve config → stream → backbone + method → learner → metrics → results.json."""
from __future__ import annotations

import dataclasses
import hashlib
import random
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from . import __version__
from .backbones import get_backbone_spec
from .config import RunConfig, build_config, load_yaml, parse_set
from .data import TaskStream, get_benchmark
from .data.base import GENERIC_DATA_KEYS, LoadRequest, joint_stream, validation_stream
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
    check_method_keys: bool = True,
) -> tuple[RunConfig, set[str]]:
    """Defaults < benchmark defaults < config file < `overrides` (e.g. CLI flags) < `--set` assignments.

    Returns the validated config and the set of keys the user gave explicitly. With `check_method_keys`, a key
    the method does not read is an error.
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
    config, explicit = build_config([spec.defaults, get_method(probe.method).defaults], user_layers)
    if config.tasks is None:
        config.tasks = spec.default_tasks  # recorded resolved, so results say how many tasks ran
    if check_method_keys:
        check_keys_apply(get_method(config.method), explicit)
    unused_data = sorted(k for k in explicit if k.startswith("data.") and k.split(".", 1)[1] not in spec.data_keys | GENERIC_DATA_KEYS)
    if unused_data:
        raise UserError(f"benchmark '{spec.name}' does not use {', '.join(unused_data)}; remove it "
                        f"(data.* keys apply to csv:PATH and folder:PATH)")
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


_PREFIX_CACHE: dict[tuple[str, str], torch.Tensor] = {}  # (backbone, sha1 of the inputs) -> prefix outputs


@torch.no_grad()
def cache_prefix_outputs(stream: TaskStream, prefix: torch.nn.Module, device: torch.device, progress: bool,
                         backbone_name: str, batch_size: int = 256) -> TaskStream:
    """Replace every task's inputs by the frozen prefix's outputs, computed once (see Backbone.frozen_prefix).

    Outputs are also kept for the life of the process, keyed by the inputs' bytes, so the runs of one
    `compare` (same images, other methods and seeds) compute them once.
    """
    prefix = prefix.to(device).eval()
    total = sum(len(task.train) + len(task.test) for task in stream.tasks)
    bar = tqdm(total=total, desc="frozen backbone prefix", unit="img", disable=not progress, leave=False)

    def transform(dataset):
        if not isinstance(dataset, TensorDataset):
            raise TypeError("a frozen backbone prefix needs tensor datasets")
        inputs, labels = dataset.tensors
        key = (backbone_name, hashlib.sha1(inputs.contiguous().numpy().tobytes()).hexdigest())
        if key not in _PREFIX_CACHE:
            outputs = []
            for start in range(0, len(inputs), batch_size):
                outputs.append(prefix(inputs[start:start + batch_size].to(device)).cpu())
                bar.update(min(batch_size, len(inputs) - start))
            _PREFIX_CACHE[key] = torch.cat(outputs)
        return TensorDataset(_PREFIX_CACHE[key], labels)

    tasks = [dataclasses.replace(task, train=transform(task.train), test=transform(task.test)) for task in stream.tasks]
    bar.close()
    return dataclasses.replace(stream, tasks=tasks)


def run_experiment(config: RunConfig, out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run one (benchmark, method, seed); return the results dict and write `out_dir/results.json` if given."""
    benchmark = get_benchmark(config.benchmark)
    method_spec = get_method(config.method)
    num_tasks = config.tasks or benchmark.default_tasks
    device = resolve_device(config.device)
    start = time.perf_counter()
    backbone_name = config.backbone or benchmark.backbone
    backbone_spec = get_backbone_spec(backbone_name)
    if backbone_spec.modality != benchmark.modality:
        raise UserError(f"backbone '{backbone_name}' takes {backbone_spec.modality} inputs but benchmark "
                        f"'{benchmark.name}' gives {benchmark.modality}; pick a {benchmark.modality} backbone "
                        f"(default: {benchmark.backbone})")
    # Everything that can fail on bad input happens before the output folder exists.
    stream = benchmark.load(LoadRequest(config.seed, num_tasks, config.data_dir, backbone_name, config.data))
    if config.data.validation_fraction > 0:
        stream = validation_stream(stream, config.data.validation_fraction)
    seed_everything(config.seed)
    backbone = backbone_spec.build(config.seed)
    if backbone.frozen_prefix is not None:
        stream = cache_prefix_outputs(stream, backbone.frozen_prefix, device, progress, backbone_name)
    if method_spec.joint:
        stream = joint_stream(stream)
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
