"""File modes: what clipforge writes gets the permissions the user's umask gives any new file.

``tempfile.mkstemp`` (behind every atomic write here) and safetensors' writer create files 0600, so a saved model
or cache shared with a team, a container or a web server would be unreadable to them. ``user_mode`` restores
the ordinary ``0666 & ~umask`` before the file is renamed into place.
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Callable

from clipforge.util.testhooks import mid_write

_lock = threading.Lock()


def umask() -> int:
    """The process umask (reading it means setting it, so under a lock and restored at once)."""
    with _lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def user_mode(path: str | Path) -> None:
    os.chmod(path, 0o666 & ~umask())


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a file system that cannot fsync a folder is left as it is)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write(path: Path, write: Callable, hook: str | None = None) -> None:
    """``write(file)`` into a temporary file beside ``path`` (``.tmp-<stem>-*<suffix>``), fsync, user mode, rename:
    ``path`` is whole or absent. ``hook`` names a crash-test point inside the write (util/testhooks.py)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.stem}-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(mid_write(f, hook) if hook else f)
            f.flush()
            os.fsync(f.fileno())
        user_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


__all__ = ["umask", "user_mode", "fsync_dir", "atomic_write"]
