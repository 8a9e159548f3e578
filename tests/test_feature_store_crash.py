"""``kill -9`` of ``clipforge embed`` in the middle of a shard (after the first shard is committed, while the
second one's image array is half written; util/testhooks.py pauses the child there), then the same command again:
it keeps the finished shard, embeds from the first unfinished one, never reads the half file, and ends with the
store an uninterrupted run writes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipforge.embed.store import StoreLayout, embed_to_store
from clipforge.embed.store_reader import FeatureStore
from clipforge.errors import ClipforgeError

from storeutil import IMAGE_SIZE, make_shards, towers

CLI = [sys.executable, "-c", "from clipforge.cli import app; app()"]


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CLIPFORGE_EMBED_BACKEND": "off", **extra}


def _wait_for(flag: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"embed ended (rc {proc.returncode}) before the pause:\n{proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, "pause point never reached"
        time.sleep(0.05)


def test_kill_9_mid_shard_then_rerun_resumes_and_equals_an_uninterrupted_run(tmp_path):
    make_shards(tmp_path / "shards", n_shards=3, per_shard=4, bad=True)
    out = tmp_path / "store"
    cmd = CLI + ["embed", "--data", f"wds:{tmp_path / 'shards'}", "--out", str(out), "--image-size", str(IMAGE_SIZE),
                 "--batch-size", "3"]
    flag = tmp_path / "paused"
    proc = subprocess.Popen(cmd, env=_env(CLIPFORGE_TEST_PAUSE_AT="store-write@2", CLIPFORGE_TEST_PAUSE_FILE=str(flag),
                                          CLIPFORGE_TEST_PAUSE_SECONDS="120"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(flag, proc)
        layout = StoreLayout(out, 3)
        half = list(layout.image(1).parent.glob(".tmp-*"))
        assert layout.done(0).is_file() and not layout.done(1).exists()        # shard 0 committed, shard 1 not
        assert len(half) == 1 and not layout.image(1).exists()                 # its array: a temporary name only
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert half[0].stat().st_size < 128 + 4 * 1280 * 2                         # really half: header, no rows
    with pytest.raises(ClipforgeError, match="2 unfinished shard"):
        FeatureStore(out)                                                      # a killed store is never read as whole
    stamp = layout.done(0).stat().st_mtime_ns

    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("shard 0 (00000.tar): already done, 4 rows kept")
    assert lines[1].startswith("shard 1 (00001.tar): 4 rows, 2 skipped") and lines[2].startswith("shard 2 (00002.tar)")
    assert layout.done(0).stat().st_mtime_ns == stamp                          # not recomputed
    assert not list(out.rglob(".tmp-*"))                                        # the half file is gone

    image, text = towers()
    embed_to_store(sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")), tmp_path / "ref", image, text,
                   batch_size=3, backend="off")
    resumed, ref = FeatureStore(out), FeatureStore(tmp_path / "ref")
    assert resumed.n == ref.n == 12 and resumed.skipped() == ref.skipped()
    assert resumed.metadata().equals(ref.metadata())
    for i in range(3):
        for a, b in zip(resumed.read(i, 0, 4), ref.read(i, 0, 4)):
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)
