"""Candidate changes to the default, tried on the 5 development splits only (docs/benchmarks.md).

Each candidate is the default run config plus ``--set`` overrides; each is trained, calibrated (GZSL gamma on
pseudo-splits of the seen classes) and evaluated on every development split exactly as the clipforge row of
``bench fashion-zsl`` is, without the linear probe. The first row is the default. A candidate becomes the default
only if these rows support it, and the fresh splits are run after that choice is committed.

    python -m benchmarks.fashion_zsl_trials --out benchmarks/results structure-0.1=loss.structure_weight=0.1
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks.env import environment
from benchmarks.fashion_zsl import SPLITS
from clipforge.config import load_config
from clipforge.pipelines import classes as align

KEYS = ["unseen_top1", "unseen_mean_per_class_recall", "seen_top1", "gzsl_seen", "gzsl_unseen", "gzsl_h", "gamma"]


def run_candidate(overrides: list[str], splits=SPLITS) -> list[dict]:
    """Per-split metrics of the default config with ``overrides``."""
    towers, rows = None, []
    for seed in splits:
        cfg = load_config(None, [*overrides, f"data.split_seed={seed}"])
        p = align.prepare(cfg, progress=False, towers=towers)
        towers = (p.image_tower, p.text_tower)
        t0 = time.time()
        model = align.train_model(cfg, p, progress=False)
        gamma = align.calibrate_gamma(cfg, p)
        m = align.evaluate_model(model, p, gamma, probe=False)
        m.pop("unseen_confusion", None)
        rows.append({**m, "gamma": gamma, "split_seed": seed, "train_seconds": round(time.time() - t0, 1)})
        print(f"{overrides or 'default'} split {seed}: unseen {m['unseen_top1']:.3f} H {m['gzsl_h']:.3f}", flush=True)
    return rows


def row(name: str, overrides: list[str], per_split: list[dict]) -> dict:
    return {"method": name, "overrides": overrides, "per_split": per_split,
            "metrics": {k: float(np.mean([s[k] for s in per_split])) for k in KEYS},
            "std": {k: float(np.std([s[k] for s in per_split])) for k in KEYS}}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder; writes fashion-zsl-trials.json (rows merged by name)")
    ap.add_argument("candidates", nargs="*", help="NAME=SET[,SET...]; the default row is always run first")
    args = ap.parse_args(argv)
    path = Path(args.out) / "fashion-zsl-trials.json"
    old = json.loads(path.read_text()) if path.is_file() else {"results": []}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    wanted = [("clipforge", [])] + [(c.split("=", 1)[0], c.split("=", 1)[1].split(",")) for c in args.candidates]
    t0, rows = time.time(), {r["method"]: r for r in old["results"]}
    for name, overrides in wanted:
        rows[name] = {**row(name, overrides, run_candidate(overrides)), "commit": commit}
    ordered = [rows.pop("clipforge")] + list(rows.values())
    result = {"suite": "fashion-zsl-trials", "dataset": "fashion-mnist", "task": "zeroshot_classification",
              "protocol": {"splits": list(SPLITS), "as": "the clipforge row of bench fashion-zsl, no linear probe"},
              "results": ordered, "wall_seconds": round(time.time() - t0, 1), "env": environment()}
    path.write_text(json.dumps(result, indent=2))
    return path


if __name__ == "__main__":
    print(main())
