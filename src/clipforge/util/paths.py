"""Where clipforge keeps files it can rebuild: the user cache directory, never the directory you run from.

Root, first that is set: ``$CLIPFORGE_CACHE``, ``$XDG_CACHE_HOME/clipforge``, ``~/.cache/clipforge``. Under it:
``features/`` (tower embeddings, content-keyed), ``data/`` (downloaded data sets; ``$CLIPFORGE_DATA`` overrides),
``fast-embed/`` (the timed backend choice and ONNX graphs; ``$CLIPFORGE_FAST_CACHE``) and ``onnx/`` (the service's
text graph; ``$CLIPFORGE_ONNX_CACHE``). Every config with a ``cache_dir`` field overrides the features folder.
"""
from __future__ import annotations

import os
from pathlib import Path

_OVERRIDES = {"data": "CLIPFORGE_DATA", "fast-embed": "CLIPFORGE_FAST_CACHE", "onnx": "CLIPFORGE_ONNX_CACHE"}


def cache_root() -> Path:
    if os.environ.get("CLIPFORGE_CACHE"):
        return Path(os.environ["CLIPFORGE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"  # XDG: relative = unset
    return base / "clipforge"


def cache_dir(kind: str) -> Path:
    """The folder for ``kind`` ('features', 'data', 'fast-embed', 'onnx'), honouring its own override variable."""
    env = _OVERRIDES.get(kind)
    if env and os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    return cache_root() / kind


def features_cache() -> str:
    """Default of every ``cache_dir`` config field (a str, as configs hold it)."""
    return str(cache_dir("features"))


__all__ = ["cache_root", "cache_dir", "features_cache"]
