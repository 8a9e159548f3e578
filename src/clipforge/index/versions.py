"""An index directory's versions on disk: write a complete version under a temporary name, rename it, then
point CURRENT at it (os.replace), so a crash at any moment leaves the previous version live and loadable."""
from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path

from ..errors import ClipforgeError

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
    """Rename a finished temporary version into place, point CURRENT at it, drop older versions."""
    final = root / f"v-{time.time_ns()}"
    os.rename(tmp, final)
    pointer = root / f".{CURRENT}.{uuid.uuid4().hex}"
    pointer.write_text(final.name)
    os.replace(pointer, root / CURRENT)
    for d in root.iterdir():
        if d.is_dir() and d != final and (d.name.startswith("v-") or d.name.startswith(".tmp-")):
            shutil.rmtree(d, ignore_errors=True)
    return final


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
