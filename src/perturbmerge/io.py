"""Atomic file writes and environment facts."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # name the file that was being written, not the temporary one
        Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


NAME_MAX = 255  # bytes per path component on Linux and macOS file systems


def check_out_path(path: str | Path) -> Path:
    """`path` as a Path, refusing (UserError) a component longer than the file system allows."""
    from .errors import UserError

    path = Path(path)
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UserError(f"--out has a name of {len(os.fsencode(part))} bytes ('{part[:20]}…'); file systems "
                            f"allow {NAME_MAX}, choose a shorter --out")
    return path


def make_out_folder(path: str | Path) -> tuple[Path, bool]:
    """Create `path` (an --out folder) if it does not exist; (path, True if this call created it). Refuses
    (UserError) a name too long, an existing file, or a folder that cannot be created."""
    from .errors import UserError

    path = check_out_path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out '{path}' exists and is not a folder; choose another --out")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"output folder '{path}' is not writable ({exc.strerror}); choose another --out") from None
    return path, created


def slug(text: str) -> str:
    """`text` made safe as one folder name: runs of anything but letters, digits, '.', '_', '-' become '-'
    (so 'csv:x/../../y.csv' cannot lead a default output folder out of runs/)."""
    import re

    cleaned = re.sub(r"[^A-Za-z0-9._-]+|\.{2,}", "-", text).strip("-.")
    return cleaned[:80] or "run"


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


MANIFEST = "MANIFEST.json"


def write_manifest(folder: str | Path, format_name: str) -> None:
    """MANIFEST.json in `folder`: the sha256 of every other file under it (relative POSIX paths). Written last, so a
    folder whose manifest exists was written in full."""
    folder = Path(folder)
    files = {path.relative_to(folder).as_posix(): sha256_file(path)
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}
    atomic_write_text(folder / MANIFEST, json.dumps({"format": format_name, "files": files}, indent=1) + "\n")


def manifest_problem(folder: str | Path, format_name: str) -> str | None:
    """Why the files of `folder` do not match its manifest (none or unreadable, a listed file missing or changed),
    or None. Files the manifest does not list are not judged."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("format") != format_name or not isinstance(files, dict) or not files:
            return f"its {MANIFEST} is not in format {format_name}"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"no readable {MANIFEST} ({exc.__class__.__name__})"
    for name, expected in files.items():
        path = folder / name
        if ".." in Path(name).parts or not path.is_file():
            return f"{name}, listed in {MANIFEST}, is missing"
        try:
            actual = sha256_file(path)
        except OSError as exc:
            return f"{name} unreadable ({exc.__class__.__name__})"
        if actual != expected:
            return f"{name} fails its integrity check (its sha256 differs from the one in {MANIFEST})"
    return None


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def machine_description() -> str:
    """CPU/GPU, thread count and torch version, for result files."""
    import torch

    if torch.cuda.is_available():
        device = f"GPU {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    else:
        device = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    return f"{platform.machine()} {device}, Python {platform.python_version()}, torch {torch.__version__}"


def peak_memory_gib(device: Any = None) -> dict[str, float]:
    """This process's peak memory so far, in GiB: `resident` (the OS's maximum resident set size; a resumed run's
    counts from its resume) and, on a CUDA device, `cuda` (the most memory torch's allocator held for tensors)."""
    import resource
    import sys

    import torch

    peak = {}
    if sys.platform != "win32":
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
        peak["resident"] = maxrss / 2**30 if sys.platform == "darwin" else maxrss / 2**20
    if device is not None and torch.device(device).type == "cuda":
        peak["cuda"] = torch.cuda.max_memory_allocated(device) / 2**30
    return peak


def is_committed_results_path(path: str | Path) -> bool:
    """Whether `path` lies in a `benchmarks/results/` folder: where runs that documents cite are kept."""
    parts = Path(path).resolve().parts
    return any(parts[i:i + 2] == ("benchmarks", "results") for i in range(len(parts) - 1))


def require_committed_source(out_dir: str | Path) -> None:
    """A run written under benchmarks/results/ must come from a committed source tree (its results.json names
    the commit, and a dirty tree's commit does not say what ran): refused in one line otherwise."""
    if is_committed_results_path(out_dir) and _git_commit().endswith("+dirty"):
        from .errors import UserError

        root = Path(__file__).resolve().parents[2]
        raise UserError(f"the source tree {root} has uncommitted changes, and '{out_dir}' is under "
                        f"benchmarks/results/, where every run must name the commit that produced it; commit or "
                        f"stash the changes (or write the run outside benchmarks/results/)")


def _git_commit() -> str:
    """The source checkout's commit (with '+dirty' for local changes), or 'unknown' outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "git_commit": _git_commit()}
    for name in ("perturbmerge", "torch", "transformers", "peft", "numpy", "scikit-learn", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
