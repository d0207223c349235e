"""Checkpoints: everything a run needs to continue bit-identically, as safetensors + JSON (never pickle).

Layout inside a run folder:

    checkpoints/LATEST          name of the last complete checkpoint (replaced atomically, written last)
    checkpoints/ckpt-000042/    state.json (structure, numbers, RNG states of Python/NumPy) +
                                tensors.safetensors (model, optimiser, running sums, torch RNG states)

A checkpoint folder is written in full under a temporary name, renamed, and only then named in LATEST; the
previous checkpoint is deleted after that. A crash at any point leaves LATEST naming a complete checkpoint.

`split_tensors` / `join_tensors` turn a nested state (dicts, lists, tensors, numbers, strings) into a JSON tree
with tensor placeholders plus a flat {key: tensor} dict, and back.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError
from .io import atomic_write_text

FORMAT = "perturbmerge-checkpoint-1"
FOLDER = "checkpoints"
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
    """Write the next checkpoint in full, then make it the latest and delete the previous one; return its folder.
    `before_commit` runs between the complete write and the switch of LATEST (a hook for crash tests)."""
    root = Path(run_dir) / FOLDER
    root.mkdir(parents=True, exist_ok=True)
    previous = latest_checkpoint(run_dir)
    number = int(previous.name.removeprefix("ckpt-")) + 1 if previous is not None else 1
    name = f"ckpt-{number:06d}"
    tree, tensors = split_tensors(state)
    staging = root / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file(tensors, str(staging / "tensors.safetensors"))
    (staging / "state.json").write_text(json.dumps({"format": FORMAT, "state": tree}))
    for file in staging.iterdir():
        _fsync(file)
    final = root / name
    shutil.rmtree(final, ignore_errors=True)  # a leftover of a run killed after this rename, before LATEST
    os.replace(staging, final)
    if before_commit is not None:
        before_commit()
    atomic_write_text(root / "LATEST", name + "\n")
    for old in root.iterdir():  # the previous checkpoint and leftovers of interrupted writes
        if old.name not in (name, "LATEST"):
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder LATEST names, or None when no checkpoint was completed."""
    pointer = Path(run_dir) / FOLDER / "LATEST"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    return folder if folder.is_dir() else None


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`. Only JSON and safetensors are parsed; anything else
    (e.g. a pickle in place of the tensors file) is refused."""
    folder = Path(folder)
    fix = "resume from a checkpoint written by perturbmerge, or start a new run"
    try:
        document = json.loads((folder / "state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"checkpoint '{folder}' has no readable state.json ({exc.__class__.__name__}); {fix}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise UserError(f"checkpoint '{folder}' is not in format {FORMAT}; {fix}")
    try:
        tensors = load_file(str(folder / "tensors.safetensors"))
    except (OSError, SafetensorError) as exc:
        raise UserError(f"checkpoint '{folder}': tensors.safetensors is not a valid safetensors file ({exc}); "
                        f"{fix}") from None
    try:
        return join_tensors(document["state"], tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"checkpoint '{folder}' is inconsistent ({exc!r} missing or malformed); {fix}") from None


def checkpoint_versions(folder: str | Path) -> dict[str, Any]:
    """The package versions a checkpoint was written with, from its state.json alone (no tensors read)."""
    try:
        document = json.loads((Path(folder) / "state.json").read_text())
        pairs = dict((key, value) for key, value in document["state"]["__dict__"])
        return join_tensors(pairs.get("versions", {"__dict__": []}), {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"checkpoint '{folder}' has no readable state.json ({exc.__class__.__name__}); resume from "
                        f"a checkpoint written by perturbmerge, or start a new run") from None


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
