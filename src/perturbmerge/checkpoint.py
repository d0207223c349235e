"""Checkpoints: everything a run needs to continue bit-identically, as safetensors + JSON (never pickle).

Layout inside a run folder:

    checkpoints/LATEST          name of the last complete checkpoint (replaced atomically, written last)
    checkpoints/ckpt-000042/    state.json (structure, numbers, RNG states of Python/NumPy) +
                                tensors.safetensors (model, optimiser, running sums, torch RNG states) +
                                MANIFEST.json (the sha256 of both, written last)

A checkpoint folder is written in full under a temporary name, renamed, and only then named in LATEST; of the
older ones, the previous checkpoint is kept (a fallback should the latest be damaged) and the rest are deleted. A
crash at any point leaves LATEST naming a complete checkpoint. MANIFEST.json records the sha256 of every other
file of the checkpoint and is checked before anything else is read, so a flipped bit in the tensors or an edited
number in state.json is refused (with the previous checkpoint as the way on) rather than resumed from. Checkpoints
of format 1 (no manifest) are still read, with the tensors' sha256 that their state.json records.

`split_tensors` / `join_tensors` turn a nested state (dicts, lists, tensors, numbers, strings) into a JSON tree
with tensor placeholders plus a flat {key: tensor} dict, and back.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError
from .io import MANIFEST, atomic_write_text, manifest_problem, sha256_file, write_manifest

FORMAT = "perturbmerge-checkpoint-2"
LEGACY_FORMAT = "perturbmerge-checkpoint-1"  # no manifest: only the tensors file is hashed (in state.json)
FOLDER = "checkpoints"
STATE, TENSORS = "state.json", "tensors.safetensors"
_CHECKPOINT_NAME = re.compile(r"ckpt-\d{6,}")


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (a full disk, permissions); the message says how to continue, which
    depends on whether the run folder survives (the runner removes a folder that never got a checkpoint)."""

    def __init__(self, root: Path, reason: str, run_dir: str | Path) -> None:
        super().__init__(f"cannot write a checkpoint in '{root}' ({reason}); free space or fix permissions, then "
                         f"continue with `perturbmerge run --resume {run_dir}`")
        self.root, self.reason = root, reason
_TENSOR = "__tensor__"


def split_tensors(state: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able tree with {"__tensor__": key} placeholders, {key: tensor})."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().cpu().contiguous().clone()
            return {_TENSOR: path}
        if isinstance(value, dict):
            if any(not isinstance(k, (str, int)) for k in value):
                raise TypeError(f"checkpoint state at '{path}' has a key that is not a string or int")
            return {"__dict__": [[k, walk(v, f"{path}/{k}")] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"checkpoint state at '{path}' holds a {type(value).__name__}, which has no safe format")

    return walk(state, prefix), tensors


def join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_tensors` (lists come back as lists, dict keys keep their str/int type)."""
    if isinstance(tree, dict):
        if _TENSOR in tree:
            return tensors[tree[_TENSOR]]
        return {k: join_tensors(v, tensors) for k, v in tree["__dict__"]}
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    return tree


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) global RNG states."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, state: dict[str, Any], before_commit: Callable[[], None] | None = None) -> Path:
    """Write the next checkpoint in full, then make it the latest; keep the previous one, delete older ones; return
    its folder. `before_commit` runs between the complete write and the switch of LATEST (a hook for crash tests).
    A failed write (e.g. a full disk) removes its partial files and raises a UserError."""
    root = Path(run_dir) / FOLDER
    root.mkdir(parents=True, exist_ok=True)
    previous = latest_checkpoint(run_dir)
    number = int(previous.name.removeprefix("ckpt-")) + 1 if previous is not None else 1
    name = f"ckpt-{number:06d}"
    tree, tensors = split_tensors(state)
    staging = root / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        save_file(tensors, str(staging / TENSORS))
        document = {"format": FORMAT, "tensors_sha256": sha256_file(staging / TENSORS), "state": tree}
        (staging / STATE).write_text(json.dumps(document))
        write_manifest(staging, FORMAT)  # last: a checkpoint without one is incomplete
        for file in staging.iterdir():
            _fsync(file)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CheckpointWriteError(root, reason, run_dir) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = root / name
    shutil.rmtree(final, ignore_errors=True)  # a leftover of a run killed after this rename, before LATEST
    os.replace(staging, final)
    if before_commit is not None:
        before_commit()
    atomic_write_text(root / "LATEST", name + "\n")
    keep = {name, "LATEST"} | ({previous.name} if previous is not None else set())
    for old in root.iterdir():  # older checkpoints and leftovers of interrupted writes
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder LATEST names, or None when no checkpoint was ever committed (no LATEST). A LATEST that cannot
    be read or names no checkpoint folder is an error, not a reason to start again."""
    pointer = Path(run_dir) / FOLDER / "LATEST"
    if not pointer.exists():
        return None
    try:
        name = pointer.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        name = None
    folder = pointer.parent / name if name else None
    if name is None or not _CHECKPOINT_NAME.fullmatch(name) or not folder.is_dir():
        raise UserError(f"{pointer} does not name a checkpoint of this run{_fallback_hint(run_dir, exclude=name)}")
    return folder


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether a checkpoint was committed (LATEST exists), without judging it: for clean-up decisions."""
    return (Path(run_dir) / FOLDER / "LATEST").exists()


def _fallback_hint(run_dir: str | Path, exclude: str | None) -> str:
    """'; continue from ckpt-… with …' naming the newest other checkpoint that passes its integrity check."""
    root = Path(run_dir) / FOLDER
    candidates = sorted((p for p in root.glob("ckpt-*") if p.is_dir() and p.name != exclude), reverse=True)
    for folder in candidates:
        if _integrity_problem(folder) is None:
            return (f"; continue from the previous checkpoint with `perturbmerge run --resume {run_dir} "
                    f"--from-checkpoint {folder.name}`, or start a new run")
    return "; no other intact checkpoint is left, start a new run"


def _manifest_problem(folder: Path) -> str | None:
    problem = manifest_problem(folder, FORMAT)
    if problem is None and not {STATE, TENSORS} <= set(json.loads((folder / MANIFEST).read_text())["files"]):
        return f"its {MANIFEST} does not cover {STATE} and {TENSORS}"
    return problem


def _integrity_problem(folder: Path, manifest_checked: bool = False) -> str | None:
    """Why `folder` is not an intact checkpoint (a file that differs from the manifest, unreadable state.json,
    other format), or None. The manifest covers the tensors file; only format 1 (no manifest) hashes it against the
    sha256 its state.json records. `manifest_checked`: the caller has verified the manifest already."""
    if (folder / MANIFEST).exists() and not manifest_checked:
        problem = _manifest_problem(folder)
        if problem is not None:
            return problem
    try:
        document = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"no readable {STATE} ({exc.__class__.__name__})"
    if not isinstance(document, dict) or document.get("format") not in (FORMAT, LEGACY_FORMAT):
        return f"not in format {FORMAT}"
    if document["format"] == FORMAT:
        return None if (folder / MANIFEST).exists() else f"no {MANIFEST} (written last: the checkpoint is incomplete)"
    expected = document.get("tensors_sha256")
    try:
        actual = sha256_file(folder / TENSORS)
    except OSError as exc:
        return f"{TENSORS} unreadable ({exc.__class__.__name__})"
    if not isinstance(expected, str) or expected != actual:
        return f"{TENSORS} fails its integrity check (its sha256 differs from the one in {STATE})"
    return None


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`. Only JSON and safetensors are parsed; anything else
    (e.g. a pickle in place of the tensors file) is refused, as is a tensors file whose sha256 differs from the
    one recorded at writing time."""
    folder = Path(folder)
    def fix() -> str:  # read the other checkpoints only when this one is refused
        return _fallback_hint(folder.parent.parent, exclude=folder.name)

    if (folder / MANIFEST).exists() and (problem := _manifest_problem(folder)) is not None:
        raise UserError(f"checkpoint '{folder}': {problem}{fix()}")  # before anything is parsed
    try:
        document = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"checkpoint '{folder}' has no readable state.json ({exc.__class__.__name__}){fix()}") from None
    if not isinstance(document, dict) or document.get("format") not in (FORMAT, LEGACY_FORMAT):
        raise UserError(f"checkpoint '{folder}' is not in format {FORMAT}{fix()}")
    try:
        # fresh allocations: tensors viewed inside the loaded file's buffer can sit at an address that sends a BLAS
        # kernel down another (differently rounding) path than the run's own allocations did — a matmul of the
        # same bytes then differs in the last bits and a resume would not be bit-identical
        tensors = {name: tensor.clone() for name, tensor in load_file(str(folder / TENSORS)).items()}
    except (OSError, SafetensorError) as exc:
        raise UserError(f"checkpoint '{folder}': tensors.safetensors is not a valid safetensors file ({exc})"
                        f"{fix()}") from None
    problem = _integrity_problem(folder, manifest_checked=True)
    if problem is not None:
        raise UserError(f"checkpoint '{folder}': {problem}{fix()}")
    try:
        return join_tensors(document["state"], tensors)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise UserError(f"checkpoint '{folder}' is inconsistent ({exc!r} missing or malformed){fix()}") from None


def check_run_state(state: Any, folder: str | Path, num_tasks: int) -> None:
    """Refuse (one line) a run checkpoint whose state does not have the shape `ContinualLearner` writes: a position
    inside this stream, integer counters, a config mapping, complete RNG states."""
    def fail(what: str) -> None:
        raise UserError(f"checkpoint '{folder}' is malformed ({what}){_fallback_hint(Path(folder).parent.parent, Path(folder).name)}")

    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not isinstance(state, dict):
        fail("its state is not a mapping")
    for key in ("position", "step", "result", "losses", "head_blocks", "model", "method", "rng", "config"):
        if key not in state:
            fail(f"no '{key}'")
    position = state["position"]
    if not isinstance(position, dict) or not all(integer(position.get(k)) and position[k] >= 0
                                                 for k in ("task", "epoch", "batch")):
        fail("position must hold non-negative integers task, epoch and batch")
    if not isinstance(position.get("done"), bool):
        fail("position.done must be true or false")
    if position["task"] >= num_tasks:
        fail(f"position.task {position['task']} is outside this run's {num_tasks} tasks")
    if not integer(state["step"]) or state["step"] < 0:
        fail(f"step {state['step']!r} is not a non-negative integer")
    if not isinstance(state["config"], dict):
        fail("config is not a mapping")
    if not isinstance(state["model"], dict) or not isinstance(state["method"], dict):
        fail("model and method must be mappings")
    if not isinstance(state["head_blocks"], list) or not all(integer(n) and n > 0 for n in state["head_blocks"]):
        fail("head_blocks must be a list of positive integers")
    rng = state["rng"]
    try:
        python_ok = len(rng["python"]) == 3 and len(rng["python"][1]) == 625
        numpy_ok = len(rng["numpy"]) == 5 and len(rng["numpy"][1]) == 624
        torch_ok = isinstance(rng["torch"], torch.Tensor) and rng["torch"].dtype == torch.uint8 \
            and rng["torch"].numel() == torch.get_rng_state().numel()
    except (KeyError, TypeError, IndexError):
        python_ok = numpy_ok = torch_ok = False
    if not (python_ok and numpy_ok and torch_ok):
        fail("the random-number-generator states are incomplete")


def checkpoint_versions(folder: str | Path) -> dict[str, Any]:
    """The package versions a checkpoint was written with, from its state.json (after the integrity check)."""
    folder = Path(folder)
    problem = _integrity_problem(folder)
    if problem is not None:
        raise UserError(f"checkpoint '{folder}': {problem}{_fallback_hint(folder.parent.parent, folder.name)}")
    try:
        document = json.loads((Path(folder) / "state.json").read_text())
        pairs = dict((key, value) for key, value in document["state"]["__dict__"])
        return join_tensors(pairs.get("versions", {"__dict__": []}), {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"checkpoint '{folder}' has no readable state.json ({exc.__class__.__name__})"
                        f"{_fallback_hint(folder.parent.parent, folder.name)}") from None


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
