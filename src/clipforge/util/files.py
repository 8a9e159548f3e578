"""File modes: what clipforge writes gets the permissions the user's umask gives any new file.

``tempfile.mkstemp`` (behind every atomic write here) and safetensors' writer create files 0600, so a saved model
or cache shared with a team, a container or a web server would be unreadable to them. ``user_mode`` restores
the ordinary ``0666 & ~umask`` before the file is renamed into place.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

_lock = threading.Lock()


def umask() -> int:
    """The process umask (reading it means setting it, so under a lock and restored at once)."""
    with _lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def user_mode(path: str | Path) -> None:
    os.chmod(path, 0o666 & ~umask())


__all__ = ["umask", "user_mode"]
