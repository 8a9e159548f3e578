"""Fashion-MNIST zero-shot on 20 FRESH 7/3 splits (docs/benchmarks.md): the splits nobody looked at.

The 5 protocol splits (seeds 0-4) are the development set: every default was chosen while watching them. This
suite runs the same protocol (data sizes, seen-only training, GZSL calibration on pseudo-splits of the seen
classes, the same methods and code as ``fashion_zsl.py``) on splits drawn by a rule fixed before any of them was
run: seeds 200, 201, ... in order, unseen = ``sorted(random.Random(seed).sample(range(10), 3))``, a split kept
when its unseen set is not one of the protocol's and not kept already, until 20 are kept. The JSON records the
git commit the defaults were frozen at, so a reader can check that nothing changed after the splits were run.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np

from clipforge.config import load_config
from clipforge.data.splits import protocol_unseen
from clipforge.errors import ClipforgeError
from clipforge.pipelines import classes as align
from benchmarks.env import environment
from benchmarks.fashion_zsl import KEYS, SPLITS, run_method
from benchmarks.methods import method_overrides

FIRST_SEED = 200
N_FRESH = 20
N_CLASSES, N_UNSEEN = 10, 3
HEADLINE = ["unseen_top1", "seen_top1", "gzsl_seen", "gzsl_unseen", "gzsl_h"]


def fresh_splits(n: int = N_FRESH, first_seed: int = FIRST_SEED) -> list[tuple[int, list[int]]]:
    """[(seed, unseen class ids)] by the rule of the module docstring; never one of the protocol's 5 unseen sets."""
    taken = {tuple(protocol_unseen(N_CLASSES, N_UNSEEN, s)) for s in SPLITS}
    kept: list[tuple[int, list[int]]] = []
    seed = first_seed
    while len(kept) < n:
        unseen = tuple(protocol_unseen(N_CLASSES, N_UNSEEN, seed))
        if unseen not in taken:
            taken.add(unseen)
            kept.append((seed, list(unseen)))
        seed += 1
    return kept


def frozen_at(root: Path | None = None) -> dict:
    """The commit the run's code is at, and whether tracked files differed from it (a run on edited code)."""
    root = root or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"frozen_at": None, "tracked_changes": None}
    if head.returncode != 0:
        return {"frozen_at": None, "tracked_changes": None}
    return {"frozen_at": head.stdout.strip(), "tracked_changes": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def summarise(method: str, per_split: list[dict]) -> dict:
    """Mean, sd and the worst split (lowest unseen top-1) of one method over the fresh splits."""
    keys = [k for k in KEYS if all(k in s for s in per_split)]
    worst = min(per_split, key=lambda s: s["unseen_top1"])
    return {"method": method, "overrides": method_overrides(method),
            "metrics": {k: float(np.mean([s[k] for s in per_split])) for k in keys},
            "std": {k: float(np.std([s[k] for s in per_split])) for k in keys},
            "worst_split": {"seed": worst["seed"], "unseen": worst["unseen"],
                            **{k: worst[k] for k in HEADLINE if k in worst}},
            "per_split": per_split}


def run_fashion_zsl_fresh(out: str | Path, methods: list[str], overrides: list[str] = (), n_splits: int = N_FRESH,
                          progress: bool = False) -> Path:
    if not 1 <= n_splits <= N_FRESH:
        raise ClipforgeError(f"--splits must be 1 to {N_FRESH} (the fresh splits are fixed in advance), not {n_splits}")
    if not methods:
        raise ClipforgeError("--methods is empty; name at least one method, e.g. --methods clipforge,csa")
    for m in methods:
        method_overrides(m)                       # an unknown name fails now, not after an hour of other methods
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0, frozen = time.time(), frozen_at()       # the commit at the START of the run, not at a later write
    splits = fresh_splits()[:n_splits]
    towers, rows, trained, names = None, [], {}, None
    for method in methods:
        per_split = []
        for seed, unseen in splits:
            cfg = load_config(None, [*method_overrides(method), *overrides, f"data.split_seed={seed}"])
            p = align.prepare(cfg, progress=progress, towers=towers)
            towers, names = (p.image_tower, p.text_tower), p.class_names
            if p.unseen != unseen:                # the split the rule says, or no numbers at all
                raise RuntimeError(f"seed {seed} gave unseen {p.unseen}, the rule says {unseen}")
            ts = time.time()
            m = run_method(method, cfg, p, progress, trained)
            m.update(seed=seed, unseen=[p.class_names[c] for c in p.unseen], train_seconds=round(time.time() - ts, 2))
            per_split.append(m)
            print(f"fashion-zsl-fresh {method} seed {seed}: unseen top-1 {m['unseen_top1']:.3f}  "
                  f"H {m.get('gzsl_h', float('nan')):.3f}", flush=True)
            # written after every split: a run stopped early keeps what it measured, marked incomplete
            _write(out, overrides, splits, names, [*rows, summarise(method, per_split)], t0, frozen,
                   complete=False)
        rows.append(summarise(method, per_split))
    return _write(out, overrides, splits, names, rows, t0, frozen, complete=True)


def _write(out: Path, overrides, splits, names, rows: list[dict], t0: float, frozen: dict, complete: bool) -> Path:
    cfg = load_config(None, list(overrides))
    result = {"suite": "fashion-zsl-fresh", "dataset": "fashion-mnist", "task": "zeroshot_classification",
              "model": f"{cfg.towers.image} + {cfg.towers.text}", **frozen, "complete": complete,
              "protocol": {"splits": [{"seed": s, "unseen_ids": u, "unseen": [names[c] for c in u] if names else None}
                                      for s, u in splits],
                           "rule": f"seeds {FIRST_SEED}, {FIRST_SEED + 1}, ... in order; unseen = "
                                   "sorted(random.Random(seed).sample(range(10), 3)); kept when not one of the "
                                   f"protocol splits (seeds {SPLITS[0]}-{SPLITS[-1]}) and not kept already; "
                                   f"the first {N_FRESH} kept",
                           "train_per_class": cfg.data.train_per_class, "test_per_class": cfg.data.test_per_class,
                           "training": "seen classes of the train set only; GZSL gamma from pseudo-unseen splits "
                                       "of the seen classes (H curves averaged), as fashion-zsl",
                           "worst_split": "the split with the lowest unseen top-1 of that method"},
              "results": rows, "wall_seconds": round(time.time() - t0, 1), "env": environment()}
    path = out / "fashion-zsl-fresh.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    return path
