"""Crash-test hooks: stop at a named point so a test can ``kill -9`` the process exactly there.

Outside tests nothing is set and every hook is one environment lookup. The crash tests (tests/test_crash*.py) set:

* ``CLIPFORGE_TEST_PAUSE_AT=<point>`` or ``<point>@<n>``: pause the n-th time (default: the first) the process
  reaches ``<point>``;
* ``CLIPFORGE_TEST_PAUSE_FILE=<path>``: written (with the pid) when the pause begins, so the test knows when to kill;
* ``CLIPFORGE_TEST_PAUSE_SECONDS`` (default 120): how long the pause lasts if nobody kills the process.

Points: ``step`` (train.py, after an optimizer step: mid-epoch), ``checkpoint-write`` (train.py, part of a
checkpoint written to its temporary file), ``evaluation`` (evaluate/retrieval.py, retrieval metrics of a trained
model), ``cache-write`` (cache.py, part of an embedding-cache file written), ``index-write`` (index/core.py, a new
index version half written, before it is published), ``store-write`` (embed/store.py, a feature-store shard's image
array half written, before its done record), ``store-shard`` (embed/store.py, right after a shard is committed).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

_reached: dict[str, int] = {}


def _armed(point: str) -> bool:
    spec = os.environ.get("CLIPFORGE_TEST_PAUSE_AT")
    return bool(spec) and spec.partition("@")[0] == point


def pause_point(point: str) -> None:
    """Pause here when the environment asks for this point (the n-th time it is reached)."""
    if not _armed(point):
        return
    _reached[point] = _reached.get(point, 0) + 1
    nth = os.environ["CLIPFORGE_TEST_PAUSE_AT"].partition("@")[2]
    if _reached[point] != int(nth or 1):
        return
    flag = os.environ.get("CLIPFORGE_TEST_PAUSE_FILE")
    if flag:
        Path(flag).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("CLIPFORGE_TEST_PAUSE_SECONDS", "120")))


class _PauseMidWrite:
    """A file proxy that pauses (via ``pause_point``) after the first bytes are on disk: a kill leaves a partial file."""

    def __init__(self, f, point: str):
        self._f, self._point, self._done = f, point, False

    def write(self, data):
        n = self._f.write(data)
        if not self._done:
            self._done = True
            self._f.flush()
            os.fsync(self._f.fileno())
            pause_point(self._point)
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)


def mid_write(f, point: str):
    """``f`` itself, or (when a test armed ``point``) a proxy that pauses part-way through the write."""
    return _PauseMidWrite(f, point) if _armed(point) else f
