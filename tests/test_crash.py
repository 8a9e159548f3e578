"""Crash safety: ``kill -9`` at chosen points (clipforge/util/testhooks.py pauses a child process exactly there).

* caption training (``clipforge train``), killed mid-epoch, during a checkpoint write, and during evaluation: every
  checkpoint on disk loads at every moment (the one being written exists only under a temporary name, and is
  partial), and ``--resume`` finishes with the same history and metrics as an uninterrupted run with the same seed;
* the embedding cache, killed while writing an entry: the entries already there stay readable, the half-written
  one is never found under its key, and the next run recomputes it;
* the image index, killed while a new version is half written and while its embeddings are being cached: the
  previous version stays live and searchable, and the next add finishes and sweeps the leftovers.

The three training runs are killed concurrently and resumed concurrently, so the file stays well under a minute.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from captionutil import make_caption_set

CLI = [sys.executable, "-c", "from clipforge.cli import app; app()"]
POINTS = {"mid-epoch": "step@6", "checkpoint-write": "checkpoint-write@3", "evaluation": "evaluation"}


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CLIPFORGE_EMBED_BACKEND": "off"}
    env.update(extra)
    return env


def _paused(point: str, flag: Path, seconds: float = 120) -> dict:
    return _env(CLIPFORGE_TEST_PAUSE_AT=point, CLIPFORGE_TEST_PAUSE_FILE=str(flag), CLIPFORGE_TEST_PAUSE_SECONDS=str(seconds))


def _wait_for(flag: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before reaching the pause:\n"
                                 f"{proc.stderr.read()[-3000:] if proc.stderr else ''}")
        assert time.time() < deadline, "pause point never reached"
        time.sleep(0.05)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _all_checkpoints_load(ckpt_dir: Path) -> list[int]:
    epochs = []
    for p in sorted(ckpt_dir.glob("*.pt")):
        epochs.append(torch.load(p, weights_only=True)["state"]["epoch"])    # raises if half written (or unsafe)
    return epochs


# -- caption training --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    csv = make_caption_set(root / "shapes", copies=2)
    cfgs = {}
    for name in ("clean", *POINTS):
        cfg = {"data": {"source": f"csv:{csv}", "folds": 4},
               "towers": {"image_size": 32},
               "bridge": {"alpha": 0.0},
               "train": {"epochs": 4, "batch_size": 8, "ensemble": 2, "checkpoint_every": 1, "seed": 3},
               "out": str(root / name), "cache_dir": str(root / "cache")}
        cfgs[name] = root / f"{name}.yaml"
        cfgs[name].write_text(yaml.safe_dump(cfg))
    return root, cfgs


def test_training_killed_at_three_points_resumes_to_the_same_result(runs):
    root, cfgs = runs
    clean = subprocess.Popen([*CLI, "train", "-c", str(cfgs["clean"]), "--quiet"], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)   # alongside the others
    procs, at_pause = {}, {}
    for name, point in POINTS.items():
        flag = root / f"{name}.paused"
        procs[name] = subprocess.Popen([*CLI, "train", "-c", str(cfgs[name]), "--quiet"], env=_paused(point, flag),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
        _wait_for(root / f"{name}.paused", proc)
        ckpt = root / name / "checkpoints"
        at_pause[name] = _all_checkpoints_load(ckpt)           # what is under a real name is whole, even now
        if name == "checkpoint-write":
            partial = list(ckpt.glob(".*.pt.tmp"))
            assert partial, "the pause is inside a checkpoint write"
            with pytest.raises(Exception):
                torch.load(partial[0], weights_only=True)      # the file being written is partial ...
        _kill(proc)
        assert _all_checkpoints_load(ckpt) == at_pause[name]   # ... and the kill changed nothing that can be read
        assert not (root / name / "results.json").exists()
    assert at_pause["mid-epoch"] and max(at_pause["mid-epoch"]) == 1             # killed in epoch 2 of 4
    assert at_pause["evaluation"] and max(at_pause["evaluation"]) == 4           # training done, evaluating

    _, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, err[-3000:]
    resumed = {name: subprocess.Popen([*CLI, "train", "-c", str(cfgs[name]), "--quiet", "--resume"], env=_env(),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for name in POINTS}
    for name, proc in resumed.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"
    clean = json.loads((root / "clean" / "results.json").read_text())
    for name in POINTS:
        got = json.loads((root / name / "results.json").read_text())
        assert [h["loss"] for h in got["history"]] == pytest.approx([h["loss"] for h in clean["history"]], abs=1e-6), name
        for k, v in clean["metrics"].items():
            assert got["metrics"][k] == pytest.approx(v, abs=1e-9), (name, k)
        assert not list((root / name / "checkpoints").glob(".*.tmp")), name   # the next write replaced the leftover
        prev = torch.load(root / name / "checkpoints" / "prev.pt", weights_only=True)   # the fallback of --resume
        assert prev["state"]["epoch"] == 3, name


# -- embedding cache ---------------------------------------------------------------------------------------------

CACHE_SCRIPT = """
import sys, numpy as np
from clipforge.embed.cache import EmbeddingCache, Embedded
from clipforge.towers.base import Tower
class T(Tower):
    tower_id, dim = "test:crash", 4
t = T()
feats = np.arange(4000, dtype=np.float32).reshape(1000, 4) + float(sys.argv[2])
EmbeddingCache(sys.argv[1]).get_or_compute(t, sys.argv[3], lambda: Embedded(feats, np.arange(1000)))
"""


def test_cache_killed_while_writing_keeps_old_entries_and_never_serves_a_half_file(tmp_path):
    from clipforge.embed.cache import EmbeddingCache, Embedded
    from clipforge.towers.base import Tower

    class T(Tower):
        tower_id, dim = "test:crash", 4
    root = tmp_path / "cache"
    subprocess.run([sys.executable, "-c", CACHE_SCRIPT, str(root), "0", "entry-a"], env=_env(), check=True, timeout=120)
    flag = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-c", CACHE_SCRIPT, str(root), "1", "entry-b"],
                            env=_paused("cache-write", flag), stderr=subprocess.PIPE, text=True)
    _wait_for(flag, proc)
    _kill(proc)
    cache = EmbeddingCache(root)
    names = sorted(p.name for p in root.iterdir())
    assert len(names) == 2 and names[0].startswith(".tmp-") and names[1].endswith(".npz")  # A, and B's partial file
    a = cache.get_or_compute(T(), "entry-a", lambda: pytest.fail("entry A was lost"))
    assert cache.hits == 1 and a.features[0, 0] == 0
    b = cache.get_or_compute(T(), "entry-b", lambda: Embedded(np.ones((3, 4), np.float32), np.arange(3)))
    assert cache.misses == 1 and b.features.shape == (3, 4)                               # recomputed, not half-read
    old = next(root.glob(".tmp-*"))
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    EmbeddingCache(root)                                                                 # leftovers of crashes are swept
    assert not old.exists()


# -- image index -------------------------------------------------------------------------------------------------

def test_index_killed_mid_write_keeps_the_previous_version_live(tmp_path):
    import useutil
    from clipforge.index import ImageIndex
    model = useutil.trained_model_dir()
    a = useutil.make_shapes(tmp_path / "a", per_class=3, seed=11)
    b = useutil.make_shapes(tmp_path / "b", per_class=2, seed=12)
    idx_dir = tmp_path / "index"
    first = ImageIndex.build(a, model, idx_dir, progress=False, cache_dir=tmp_path / "cache")
    n_before, hits_before = len(first), [h.id for h in first.search_text("a circle", k=5)]
    killed_during = {}
    for point, args in (("cache-write", ["index", "build", str(b), "--model", str(model), "--out", str(idx_dir)]),
                        ("index-write", ["index", "add", str(idx_dir), str(b)])):
        flag = tmp_path / f"{point}.paused"
        proc = subprocess.Popen([*CLI, *args, "--quiet", "--cache-dir", str(tmp_path / f"cache-{point}")],
                                env=_paused(point, flag), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for(flag, proc)
        live = ImageIndex.load(idx_dir)                       # readable while the writer is stopped half way
        assert len(live) == n_before
        _kill(proc)
        again = ImageIndex.load(idx_dir, model=model)         # and after it was killed
        assert len(again) == n_before and [h.id for h in again.search_text("a circle", k=5)] == hits_before
        killed_during[point] = sorted(p.name for p in idx_dir.iterdir())
    assert any(n.startswith(".tmp-") for n in killed_during["index-write"])    # the half-written version is there ...
    report = ImageIndex.load(idx_dir, model=model).add(b, progress=False, cache_dir=tmp_path / "cache-final")
    assert report.added == 8 and report.total == n_before + 8
    assert not any(p.name.startswith(".tmp-") for p in idx_dir.iterdir())     # ... until the next write sweeps it
