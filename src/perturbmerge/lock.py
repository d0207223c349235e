"""One writer per output folder: an exclusive, advisory `flock` on `<folder>/.perturbmerge.lock`.

`run`, `compare`, `sweep` and `--resume` hold the lock of the folder they write while they write it. A second
writer gets a one-line error naming the process that holds it, and deletes nothing. The kernel drops a `flock` when
its process dies (even by SIGKILL), so a lock file left behind by a dead process is stale by construction and the
next writer simply takes it. A lock held by this process already is re-entered (counted), not deadlocked.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError

LOCK_FILE = ".perturbmerge.lock"
_HELD: dict[str, tuple[int, int]] = {}  # resolved folder -> (fd, depth) held by this process


def _holder(path: Path) -> str:
    """'process 1234 on host, since 12:00:00' from the lock file, as far as it can be read."""
    try:
        info = json.loads(path.read_text())
        return f"process {int(info['pid'])} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def acquire(folder: str | Path, what: str = "output folder") -> None:
    """Take the folder's lock (the folder must exist) or raise a UserError naming the holder."""
    key = str(Path(folder).resolve())
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        return
    path = Path(key) / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot lock {what} '{folder}' ({exc.strerror}); choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{what} '{folder}' is being written by {_holder(path)}; wait for it to finish or stop "
                            f"it, or use another --out") from None
        try:  # the file we locked may have been unlinked by a holder releasing it meanwhile: then lock anew
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")})
    os.ftruncate(fd, 0)
    os.write(fd, record.encode())
    _HELD[key] = (fd, 1)


def release(folder: str | Path) -> None:
    """Give the lock back (the outermost release removes the lock file, then unlocks)."""
    key = str(Path(folder).resolve())
    fd, depth = _HELD[key]
    if depth > 1:
        _HELD[key] = (fd, depth - 1)
        return
    del _HELD[key]
    try:
        (Path(key) / LOCK_FILE).unlink(missing_ok=True)
    except OSError:
        pass  # folder already removed (a failed run cleaned up after itself)
    os.close(fd)


def held_by_other(folder: str | Path) -> str | None:
    """Who holds the folder's lock, if a process other than this one does; None otherwise (no side effects)."""
    path = Path(folder) / LOCK_FILE
    if str(Path(folder).resolve()) in _HELD or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(path)
    finally:
        os.close(fd)
    return None


@contextmanager
def locked(folder: str | Path, what: str = "output folder") -> Iterator[None]:
    acquire(folder, what)
    try:
        yield
    finally:
        release(folder)


def is_lock_file(path: Path) -> bool:
    return path.name == LOCK_FILE
