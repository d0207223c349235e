"""One run end to end: resolve config → stream → backbone + method → learner → metrics → results.json."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from . import __version__, lock
from .backbones import get_backbone_spec
from .checkpoint import (FOLDER as CHECKPOINTS, CheckpointWriteError, check_run_state, checkpoint_versions, has_checkpoint,
                         latest_checkpoint, load_checkpoint)
from .config import RunConfig, build_config, config_differences, get_dotted, load_yaml, nested, parse_set
from .data import TaskStream, get_benchmark
from .distributed import init_world
from .data.base import GENERIC_DATA_KEYS, LoadRequest, joint_stream, validation_stream
from .errors import UserError
from .io import atomic_write_json, make_out_folder, package_versions, peak_memory_gib, require_committed_source
from .kinds import task_kind_for
from .learner import ContinualLearner
from .methods import check_keys_apply, get_method
from .methods.ranpac import default_projection_width
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
    probe, _ = build_config([], user_layers, check=False)  # checked below, with the method's own defaults
    spec = get_benchmark(probe.benchmark)
    config, explicit = build_config([spec.defaults, get_method(probe.method).defaults], user_layers)
    if config.tasks is None:
        config.tasks = spec.default_tasks  # recorded resolved, so results say how many tasks ran
    if config.head.rp_dim is None:  # recorded resolved, like tasks
        config.head.rp_dim = default_projection_width(resolve_device(config.device))
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
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device '{name}' is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but no CUDA device is available; use --set device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device '{name}' requested but this machine has {torch.cuda.device_count()} CUDA "
                        f"device(s); use cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{name}' requested but MPS (Apple GPU) is not available here; use --set device=cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _prepare_out_dir(out_dir: Path) -> bool:
    """Create (if needed) and lock `out_dir`, refusing one that already holds files; True if we created it (so a
    failed run can remove it). The caller releases the lock."""
    out_dir, created = make_out_folder(out_dir)
    lock.acquire(out_dir)
    try:
        if any(not lock.is_lock_file(p) for p in out_dir.iterdir()):
            raise UserError(f"output folder '{out_dir}' is not empty; choose another --out or remove it")
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        lock.release(out_dir)
        raise UserError(f"output folder '{out_dir}' is not writable ({exc.strerror}); choose another --out") from None
    except UserError:
        lock.release(out_dir)
        raise
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


RUN_CONFIG = "run_config.json"  # written when a run starts: the resolved config and versions (for --resume)
VERSION_KEYS = ("perturbmerge", "torch")  # a checkpoint resumes bit-identically only under the same versions


@functools.lru_cache(maxsize=1)
def _versions_once() -> tuple[tuple[str, str], ...]:
    return tuple({**package_versions(), "perturbmerge": __version__}.items())


def run_versions() -> dict[str, str]:
    """Package versions and git commit of this process (read once per process: `git` runs in a subprocess)."""
    return dict(_versions_once())


def build_stream_and_backbone(config: RunConfig, device: torch.device, progress: bool):
    """The run's task stream (its evaluation split: validation or test) and freshly built backbone, with the
    backbone's frozen prefix applied to the data. Seeds everything first, as a run does."""
    benchmark = get_benchmark(config.benchmark)
    num_tasks = config.tasks or benchmark.default_tasks
    backbone_name = config.backbone or benchmark.backbone
    backbone_spec = get_backbone_spec(backbone_name)
    if benchmark.sources or backbone_spec.sources:  # one error naming every data set still to fetch
        from .data.fetch import missing_message

        problems = [missing_message(benchmark.sources, config.data_dir),
                    missing_message(backbone_spec.sources)]  # weights are read from the default data folder
        if any(problems):
            raise UserError("; ".join(p for p in problems if p))
    if backbone_spec.check is not None:
        backbone_spec.check()
    if backbone_spec.modality != benchmark.modality:
        raise UserError(f"backbone '{backbone_name}' takes {backbone_spec.modality} inputs but benchmark "
                        f"'{benchmark.name}' gives {benchmark.modality}; pick a {benchmark.modality} backbone "
                        f"(default: {benchmark.backbone})")
    # Everything that can fail on bad input happens before the output folder exists.
    stream = benchmark.load(LoadRequest(config.seed, num_tasks, config.data_dir, backbone_name, config.data,
                                         progress))
    if config.data.validation_fraction > 0:
        stream = validation_stream(stream, config.data.validation_fraction)
    seed_everything(config.seed)
    backbone = backbone_spec.build(config.seed)
    if backbone.frozen_prefix is not None:
        if stream.train_augment is not None:
            raise UserError(f"backbone '{backbone_name}' caches its frozen prefix's outputs, which augmentation "
                            f"would change every epoch; set data.augment=false or use another backbone")
        stream = cache_prefix_outputs(stream, backbone.frozen_prefix, device, progress, backbone_name)
    return stream, backbone


TASK_MODELS = "task_models"  # save_task_models: task<t>.safetensors (+ .json) per task, for `perturbmerge landscape`


STEP_LOG = "steps.csv"  # one row per optimiser step: task, epoch, step, loss, perturbation draw


def step_logger(out_path: Path, resumed_at_step: int):
    """A learner callback appending one CSV row per optimiser step to `<run>/steps.csv` (task and epoch 1-based,
    the global step, the training loss, the perturbation draw s ∈ {−1, 0, 1}, empty for methods without one).
    On resume the rows after the checkpoint's step are dropped first, so the file matches an uninterrupted run."""
    import csv

    path = out_path / STEP_LOG
    header = ["task", "epoch", "step", "loss", "draw"]
    kept = []
    if resumed_at_step and path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            kept = [row for row in csv.reader(handle)][1:]
        kept = [row for row in kept if len(row) == len(header) and row[2].isdigit() and int(row[2]) <= resumed_at_step]
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *kept])

    def write(event: str, learner: ContinualLearner, info: dict[str, Any]) -> None:
        if event != "train_step":
            return
        draw = getattr(learner.method, "last_draw", None)
        with path.open("a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow([info["task"] + 1, info["epoch"] + 1, info["step"], repr(float(info["loss"])),
                                         "" if draw is None else draw])

    return write


TENSORBOARD = "tensorboard"  # log.tensorboard: event files of the run
TASK_SCALARS = ("alpha", "alpha_raw", "fisher_mass", "task_vector_norm", "acc_before_merge", "train_time_s",
                "fisher_s", "merge_s", "eval_s")


def tensorboard_logger(out_path: Path, resumed_at_step: int):
    """A learner callback writing TensorBoard scalars to `<run>/tensorboard/`: `train/loss` and
    `train/perturbation_draw` per optimiser step, `task/<name>` per task (α, Fisher mass, ‖Δ‖, times) and
    `accuracy/all_seen`, `accuracy/task_<i>` after each task; x is the global optimiser step throughout (a task's
    values at the step where it ended). On resume, events after the checkpoint's step are purged, so the curves
    match an uninterrupted run."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out_path / TENSORBOARD), purge_step=resumed_at_step + 1 if resumed_at_step else None)

    def write(event: str, learner: ContinualLearner, info: dict[str, Any]) -> None:
        if event == "train_step":
            writer.add_scalar("train/loss", float(info["loss"]), info["step"])
            draw = getattr(learner.method, "last_draw", None)
            if draw is not None:
                writer.add_scalar("train/perturbation_draw", draw, info["step"])
        elif event == "evaluated":
            step = learner.step
            log = learner.result.task_logs[-1] if learner.result.task_logs else {}
            for name in TASK_SCALARS:
                if isinstance(log.get(name), (int, float)):
                    writer.add_scalar(f"task/{name}", float(log[name]), step)
            writer.add_scalar("accuracy/all_seen", info["acc_all_seen"], step)
            for index, accuracy in enumerate(info["accuracies"]):
                writer.add_scalar(f"accuracy/task_{index + 1}", accuracy, step)
            writer.flush()

    return write


def task_model_writer(out_path: Path):
    """A learner callback that writes, at each task's end, θ̂_{t-1} and θ*_t (merge space, prefixed `previous.`
    and `optimum.`), the head as one dense matrix (`head.weight`, `head.bias`) and α — atomically."""
    from safetensors.torch import save

    from .io import atomic_write_bytes

    def write(event: str, learner: ContinualLearner, info: dict[str, Any]) -> None:
        models = getattr(learner.method, "task_models", None)
        if event != "end_task" or models is None:
            return
        head = learner.model.head
        tensors = {f"{part}.{k}": v.detach().float().cpu().contiguous()
                   for part in ("previous", "optimum") for k, v in models[part].items()}
        tensors["head.weight"] = torch.cat([b.weight.detach() for b in head.blocks]).float().cpu().contiguous()
        tensors["head.bias"] = torch.cat([b.bias.detach() for b in head.blocks]).float().cpu().contiguous()
        folder = out_path / TASK_MODELS
        atomic_write_bytes(folder / f"task{info['task'] + 1}.safetensors", save(tensors))
        atomic_write_json(folder / f"task{info['task'] + 1}.json", {"task": info["task"] + 1, "alpha": models["alpha"]})

    return write


def _save_final_model(learner: ContinualLearner, config: RunConfig, stream: TaskStream, out_path: Path) -> Path:
    """The final model as deployed, with every seen class's name, to `<run>/model/` (export.write_model)."""
    from .export import SAVED_MODEL, write_model

    folder = out_path / SAVED_MODEL
    if folder.exists():  # left by an attempt that stopped before results.json: written again from the same state
        shutil.rmtree(folder)
    backbone_name = config.backbone or get_benchmark(config.benchmark).backbone
    provenance = {"benchmark": config.benchmark, "method": config.method, "seed": config.seed,
                  "final_acc_all_seen": learner.result.acc_all_seen[-1], "versions": run_versions()}
    learner.model.eval()
    with learner.deployed_weights():
        spec = get_backbone_spec(backbone_name)
        if stream.kind == "causal_lm":
            from .export import write_language_model

            return write_language_model(learner.model.backbone, stream.tasks[0].train.tokenizer, folder,
                                        backbone_name, [t.class_names[0] for t in stream.tasks], provenance)
        return write_model(learner, folder, backbone_name, spec.modality, stream.class_names, provenance,
                           stream.info.get("max_tokens"), spec.image_size if spec.modality == "image" else None)


def run_warnings(results: Mapping[str, Any], config: RunConfig, trains: bool) -> list[str]:
    """Signs that a finished run is meaningless though nothing crashed: a task whose training loss stayed at the
    chance level ln C of its C competing classes (the masked loss), or whose task vector is exactly zero."""
    warnings = []
    if not trains:
        return warnings
    for t, log in enumerate(results["task_logs"]):
        classes = len(results["classes_per_task"][t])
        loss = log.get("train_loss_last_epoch")
        if config.head.train_logits == "task" and classes >= 2 and loss is not None and loss >= 0.98 * math.log(classes):
            warnings.append(f"task {t + 1}: the training loss ({loss:.4g}) is at or above chance level (ln {classes} = "
                            f"{math.log(classes):.3f}); nothing was learned — check lr (now {config.lr})")
        if log.get("task_vector_norm") == 0.0:
            warnings.append(f"task {t + 1}: the task vector is exactly zero (the weights did not move); check lr "
                            f"(now {config.lr}) and lora.alpha (now {config.lora.alpha})")
    return warnings


def chosen_checkpoint(run_dir: Path, name: str | None) -> Path | None:
    """The checkpoint folder to resume from: `name` inside the run's checkpoints/, or the one LATEST names."""
    if name is None:
        return latest_checkpoint(run_dir)
    folder = run_dir / CHECKPOINTS / name
    if "/" in name or not folder.is_dir():
        there = sorted(p.name for p in (run_dir / CHECKPOINTS).glob("ckpt-*")) if (run_dir / CHECKPOINTS).is_dir() else []
        raise UserError(f"--from-checkpoint '{name}' is not a checkpoint of '{run_dir}'; it has: "
                        f"{', '.join(there) or 'none'}")
    return folder


def run_experiment(config: RunConfig, out_dir: str | Path | None = None, progress: bool = True,
                   callbacks: list | None = None, resume: bool = False,
                   from_checkpoint: str | None = None) -> dict[str, Any]:
    """Run one (benchmark, method, seed); return the results dict and write `out_dir/results.json` if given.

    With `out_dir`, checkpoints go to `out_dir/checkpoints/` (config key `checkpoint`); `resume=True` continues
    from the latest one there, or from the one named `from_checkpoint` (use `resume_run`, which also checks config
    and versions)."""
    method_spec = get_method(config.method)
    device = resolve_device(config.device)
    start = time.perf_counter()
    stream, backbone = build_stream_and_backbone(config, device, progress)
    method = method_spec.build(config, backbone.lora_targets)
    single = [task.index + 1 for task in stream.tasks if task.num_classes == 1]
    if (single and stream.scenario == "class-incremental" and config.head.train_logits == "task"
            and method.trains and not method_spec.joint):
        classes = sum(task.num_classes for task in stream.tasks)
        raise UserError(f"{len(stream.tasks)} tasks of {classes} classes leave task {single[0]} with a single class: "
                        f"its masked loss is 0, so nothing trains; use --tasks {classes // 2} or fewer (or "
                        f"--set head.train_logits=seen)")
    if method_spec.kinds is not None and stream.kind not in method_spec.kinds:
        raise UserError(f"method '{config.method}' runs on {', '.join(sorted(method_spec.kinds))} tasks, and "
                        f"'{config.benchmark}' holds {stream.kind} tasks; pick another method (`perturbmerge methods`)")
    if method_spec.joint:
        stream = joint_stream(stream)
    method.check_backbone(backbone.module)
    out_path = Path(out_dir) if out_dir is not None else None
    world = init_world(device)  # several processes under torchrun; only rank 0 writes files
    writes = out_path is not None and world.is_main
    if writes:
        require_committed_source(out_path)
    progress = progress and world.is_main
    created = False
    if resume and writes:
        lock.acquire(out_path, "run folder")
    elif writes:
        created = _prepare_out_dir(out_path)  # locks it
    try:
        return _run_locked(config, method, stream, backbone, device, world, out_path, writes, progress, callbacks,
                           resume, created, start, from_checkpoint)
    finally:
        if writes:
            lock.release(out_path)


def _run_locked(config: RunConfig, method, stream: TaskStream, backbone, device: torch.device, world,
                out_path: Path | None, writes: bool, progress: bool, callbacks: list | None, resume: bool,
                created: bool, start: float, from_checkpoint: str | None) -> dict[str, Any]:
    """`run_experiment` once the output folder is locked: train, evaluate, write results.json."""
    state = None
    try:
        if resume:
            folder = chosen_checkpoint(out_path, from_checkpoint)
            state = load_checkpoint(folder) if folder is not None else None  # none yet: start from the beginning
            if state is not None:
                check_run_state(state, folder, len(stream.tasks))
        elif writes:
            atomic_write_json(out_path / RUN_CONFIG, {"config": config.to_dict(), "versions": run_versions()})
        elapsed_before = state["elapsed_s"] if state is not None else 0.0
        kind = task_kind_for(stream.kind, config)
        model = kind.build_model(backbone)
        keep = writes and config.checkpoint.enabled
        if writes:
            callbacks = [*(callbacks or []), step_logger(out_path, state["step"] if state is not None else 0)]
        if writes and config.log.tensorboard:
            callbacks = [*(callbacks or []), tensorboard_logger(out_path, state["step"] if state is not None else 0)]
        if writes and config.save_task_models:
            callbacks = [*(callbacks or []), task_model_writer(out_path)]
        learner = ContinualLearner(
            model, method, stream, epochs=config.epochs, batch_size=config.batch_size,
            eval_batch_size=config.eval_batch_size, seed=config.seed, device=device, progress=progress,
            callbacks=callbacks, checkpoint_dir=out_path if keep else None,
            checkpoint_every=config.checkpoint.every_steps, grad_accumulation=config.grad_accumulation,
            precision=config.precision, world=world, kind=kind,
        )
        learner.checkpoint_meta_fn = lambda: {"config": config.to_dict(), "versions": run_versions(),
                                              "elapsed_s": elapsed_before + time.perf_counter() - start}
        outcome = learner.run(resume=state)
        model_dir = None
        if writes and config.save_model:
            model_dir = _save_final_model(learner, config, stream, out_path)
        results = {
            "benchmark": config.benchmark,
            "method": config.method,
            "seed": config.seed,
            "scenario": stream.scenario,
            "num_tasks": len(stream.tasks),
            "classes_per_task": [task.class_names for task in stream.tasks],
            "backbone": backbone.description,
            "evaluated_on": stream.info.get("evaluated_on", "test"),
            "accuracy_matrix": outcome.accuracy_matrix,
            "acc_all_seen": outcome.acc_all_seen,
            **summarise(outcome.accuracy_matrix, outcome.acc_all_seen),
            "alphas": [log.get("alpha") for log in outcome.task_logs] if method.merges else None,
            "alpha_simplified": [log.get("alpha_simplified") for log in outcome.task_logs] if method.merges else None,
            "task_logs": outcome.task_logs,
            "wall_time_s": elapsed_before + time.perf_counter() - start,
            "resumed_from": (state["position"] if state is not None else "start") if resume else None,
            "device": str(device),
            "peak_memory_gib": peak_memory_gib(device),
            "processes": world.size,
            "config": config.to_dict(),
            "versions": run_versions(),
        }
        if model_dir is not None:
            results["model_dir"] = str(model_dir)
        results["warnings"] = run_warnings(results, config, method.trains)
        if writes:
            try:
                atomic_write_json(out_path / "results.json", results)
            except OSError as error:  # the final checkpoint is on disk: the run can finish without training again
                raise UserError(f"cannot write '{out_path / 'results.json'}' ({error.strerror or error}); free space "
                                f"or fix the folder, then finish with `perturbmerge run --resume {out_path}` (it "
                                f"trains nothing again)" if has_checkpoint(out_path) else
                                f"cannot write '{out_path / 'results.json'}' ({error.strerror or error}); free space "
                                f"or fix the folder, then run again") from None
            if not config.checkpoint.keep_final:  # finished: the checkpoints are no longer needed
                shutil.rmtree(out_path / CHECKPOINTS, ignore_errors=True)
        return results
    except BaseException as exc:
        # A run that has a checkpoint is kept for --resume; one that never got that far is removed.
        if created and out_path is not None and not has_checkpoint(out_path):
            shutil.rmtree(out_path, ignore_errors=True)
            if isinstance(exc, CheckpointWriteError):  # its --resume hint would name a folder that is gone
                raise UserError(f"cannot write a checkpoint in '{exc.root}' ({exc.reason}); free space or fix "
                                f"permissions, then run the same command again (no checkpoint had been written, "
                                f"so '{out_path}' was removed)") from None
        raise


def resume_run(run_dir: str | Path, overrides: Mapping[str, Any] | None = None, config_file: str | Path | None = None,
               sets: Sequence[str] = (), force: bool = False, progress: bool = True,
               callbacks: list | None = None, from_checkpoint: str | None = None) -> dict[str, Any]:
    """Continue the run in `run_dir` from its latest checkpoint (or the one named `from_checkpoint`; from the
    start if it has none). The run folder is locked throughout: a run still being written is refused.

    Keys the user gives again must match the run's config, and the checkpoint must come from the same
    perturbmerge and torch versions; otherwise the resume is refused naming the keys, unless `force`."""
    run_dir = Path(run_dir)
    saved_file = run_dir / RUN_CONFIG
    if (run_dir / "results.json").is_file():
        raise UserError(f"run '{run_dir}' already finished (results.json exists); nothing to resume")
    if not saved_file.is_file():
        raise UserError(f"'{run_dir}' is not a perturbmerge run folder (no {RUN_CONFIG}); give the --out folder "
                        f"of a run that was interrupted")
    with lock.locked(run_dir, "run folder"):
        return _resume_locked(run_dir, saved_file, overrides, config_file, sets, force, progress, callbacks,
                              from_checkpoint)


def _resume_locked(run_dir: Path, saved_file: Path, overrides: Mapping[str, Any] | None,
                   config_file: str | Path | None, sets: Sequence[str], force: bool, progress: bool,
                   callbacks: list | None, from_checkpoint: str | None) -> dict[str, Any]:
    try:
        saved = json.loads(saved_file.read_text())
        if not isinstance(saved["config"], dict):
            raise TypeError("config is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{saved_file} is unreadable ({exc.__class__.__name__}); the run cannot be resumed, "
                        f"start a new one") from None
    # Versions first: a run written by another version may not even have the same config keys.
    folder = chosen_checkpoint(run_dir, from_checkpoint)
    written_by = checkpoint_versions(folder) if folder is not None else saved.get("versions", {})
    problems = [f"{name} {written_by.get(name)} -> {run_versions().get(name)}" for name in VERSION_KEYS
                if written_by.get(name) != run_versions().get(name)]
    if problems and not force:
        raise UserError(f"run '{run_dir}' was written by other versions ({'; '.join(problems)}); resume it with "
                        f"those versions, or pass --force to continue anyway (not bit-identical)")
    config, _ = build_config([saved["config"]], [])
    if overrides or config_file is not None or sets:
        given, explicit = resolve_config(overrides, config_file, sets, check_method_keys=False)
        changed = [k for k in config_differences(saved["config"], given.to_dict()) if k in explicit]
        problems += [f"{k} ({get_dotted(saved['config'], k)!r} -> {get_dotted(given.to_dict(), k)!r})" for k in changed]
        config, _ = build_config([saved["config"]], [nested({k: get_dotted(given.to_dict(), k) for k in explicit})])
    if problems and not force:
        raise UserError(f"run '{run_dir}' differs from this resume: {'; '.join(problems)}; drop those options "
                        f"(the run's own config is used) or pass --force to continue anyway")
    if problems:
        atomic_write_json(saved_file, {**saved, "config": config.to_dict(), "forced_changes": problems})
    return run_experiment(config, run_dir, progress=progress, callbacks=callbacks, resume=True,
                          from_checkpoint=from_checkpoint)
