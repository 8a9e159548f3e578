"""An index directory's versions on disk: write a complete version under a temporary name, rename it, then
point CURRENT at it (os.replace), so a crash at any moment leaves the previous version live and loadable.

Readers (a running ``clipforge serve``, a library user) keep a shared ``flock`` on the folder of the version they
use (``hold``) for as long as they use it, because its SQLite file is opened lazily, once per thread. A writer
removes an old version only when it can take that lock exclusively (``collect``); a version still held stays on
disk and is collected by a later write (or by the reader that lets it go), so an ``index add`` in another process
never pulls a version out from under a server.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path

from clipforge.errors import ClipforgeError

CURRENT = "CURRENT"


@contextlib.contextmanager
def write_lock(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as f:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: single writer assumed
            pass
        yield


def current_dir(root: Path) -> Path | None:
    try:
        name = (root / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    d = root / name
    return d if name and "/" not in name and d.is_dir() else None


def publish(root: Path, tmp: Path) -> Path:
    """Rename a finished temporary version into place, point CURRENT at it, drop older versions nobody holds
    (only ever called under the write lock)."""
    final = root / f"v-{time.time_ns()}"
    os.rename(tmp, final)
    pointer = root / f".{CURRENT}.{uuid.uuid4().hex}"
    pointer.write_text(final.name)
    os.replace(pointer, root / CURRENT)
    for d in root.glob(".tmp-*"):
        shutil.rmtree(d, ignore_errors=True)
    _collect_locked(root)
    return final


def _flock(fd: int, how: str) -> bool:
    """Shared ('sh', blocking) or exclusive ('ex', non-blocking) lock; False when the exclusive one is taken."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no reader locks, old versions go at once as before
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if how == "sh" else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def hold(version: Path) -> int | None:
    """A shared lock on a version folder for as long as the returned descriptor is open (``release`` it);
    None when the folder is gone (a writer collected it between reading CURRENT and now: read CURRENT again)."""
    try:
        fd = os.open(version, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:
        return None
    _flock(fd, "sh")  # blocks only while a collector is deleting this very folder
    if not version.is_dir():
        os.close(fd)
        return None
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _collect_locked(root: Path) -> list[str]:
    """Remove every version but the live one that no reader holds; -> the names removed."""
    live = current_dir(root)
    gone = []
    for d in sorted(root.glob("v-*")):
        if d == live or not d.is_dir():
            continue
        try:
            fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            continue
        try:
            if _flock(fd, "ex"):
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d.name)
        finally:
            os.close(fd)
    return gone


def collect(root: Path) -> list[str]:
    """Best effort, for readers letting a version go: collect old versions if no writer is busy and the folder is
    writable; never raises (a read-only index simply keeps them)."""
    try:
        with open(root / ".lock", "a+") as f:
            if not _flock(f.fileno(), "ex"):
                return []
            return _collect_locked(root)
    except OSError:
        return []


def sweep_stale(root: Path) -> None:
    """Half-written versions of crashed builds (only ever called under the write lock)."""
    for d in root.glob(".tmp-*"):
        shutil.rmtree(d, ignore_errors=True)
    for p in root.glob(f".{CURRENT}.*"):
        p.unlink(missing_ok=True)


def check_target(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise ClipforgeError(f"index path '{root}' is a file, not a folder")
    if root.is_dir() and not (root / CURRENT).exists() and any(p.name != ".lock" and not p.name.startswith(".tmp-")
                                                               for p in root.iterdir()):
        raise ClipforgeError(f"'{root}' exists and is not a clipforge index; choose a new or empty folder for --out")
