"""An index that follows its folder: a long-running reader (the web service) sees each version another process
publishes, without a restart.

Every use stats ``CURRENT`` (a microsecond); when the pointer file changed (it is replaced atomically, so a new
inode), the new version is opened with the same model and becomes the one answered from. The old ImageIndex is
dropped, not closed: a request still using it finishes on it, and its reader lock goes when the last reference
does (versions.py), after which a writer may remove it. A new version that cannot be used with this model (the
folder was rebuilt with another model) is logged and the old one kept.
"""
from __future__ import annotations

import logging
import os
import threading

from clipforge.errors import ClipforgeError
from clipforge.index.core import ImageIndex
from clipforge.index.versions import CURRENT, collect

log = logging.getLogger("clipforge.index")


def _stamp(root) -> tuple | None:
    try:
        st = os.stat(root / CURRENT)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class LiveIndex:
    """``live.current()`` -> the ImageIndex of the live version; attribute access and ``len`` go to it too."""

    def __init__(self, index: ImageIndex):
        self._index, self._lock = index, threading.Lock()
        self._stamp = _stamp(index.root)
        self.root = index.root

    def current(self) -> ImageIndex:
        stamp = _stamp(self.root)
        if stamp is None or stamp == self._stamp:
            return self._index
        with self._lock:
            if stamp != self._stamp:
                self._reload(stamp)
        return self._index

    def _reload(self, stamp) -> None:
        old = self._index
        try:
            fresh = ImageIndex.load(self.root, model=old.model, search_params=old.search_params)
        except (ClipforgeError, OSError, ValueError, RuntimeError) as e:
            log.warning("index %s changed but its new version cannot be used (%s); still serving %s",
                        self.root, e, old.version.name)
        else:
            if fresh.version != old.version:
                log.info("index %s: now serving %s (%d images)", self.root, fresh.version.name, len(fresh))
                self._index = fresh
                del old
                collect(self.root)  # versions no request holds any more
        self._stamp = stamp

    def __getattr__(self, name):
        if name.startswith("_"):  # copy/pickle probes, and attributes not set yet: never the index's privates
            raise AttributeError(name)
        return getattr(self.current(), name)

    def __len__(self) -> int:
        return len(self.current())
