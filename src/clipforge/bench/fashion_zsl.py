"""Fashion-MNIST zero-shot protocol (DESIGN.md section 4): 5 fixed 7/3 splits, seen-only training.

Features are embedded once (the cache makes splits 2-5 free); each method then trains and is
evaluated on every split. The clipforge default is the first row of ``results``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .. import align
from ..config import load_config
from .env import environment
from .methods import method_overrides

SPLITS = [0, 1, 2, 3, 4]
KEYS = ["unseen_top1", "unseen_mean_per_class_recall", "seen_top1", "gzsl_seen", "gzsl_unseen", "gzsl_h",
        "gzsl_h_uncalibrated", "linear_probe_unseen_top1"]


def run_fashion_zsl(out: str | Path, methods: list[str], overrides: list[str] = (), splits=SPLITS,
                    progress: bool = False) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    towers = None
    rows = []
    for method in methods:
        per_split = []
        for seed in splits:
            cfg = load_config(None, [*method_overrides(method), *overrides, f"data.split_seed={seed}"])
            p = align.prepare(cfg, progress=progress, towers=towers)
            towers = (p.image_tower, p.text_tower)
            ts = time.time()
            model = align.train_model(cfg, p, progress=progress)
            gamma = align.calibrate_gamma(cfg, p)
            m = align.evaluate_model(model, p, gamma)
            m["train_seconds"] = round(time.time() - ts, 2)
            m["unseen"] = [p.class_names[c] for c in p.unseen]
            per_split.append(m)
            print(f"{method} split {seed}: unseen top-1 {m['unseen_top1']:.3f}  H {m['gzsl_h']:.3f}", flush=True)
        mean = {k: float(np.mean([s[k] for s in per_split])) for k in KEYS}
        std = {k: float(np.std([s[k] for s in per_split])) for k in KEYS}
        rows.append({"method": method, "overrides": method_overrides(method), "metrics": mean, "std": std,
                     "per_split": per_split})
    cfg = load_config(None, list(overrides))
    result = {"suite": "fashion-zsl", "dataset": "fashion-mnist", "task": "zeroshot_classification",
              "model": f"{cfg.towers.image} + {cfg.towers.text}",
              "protocol": {"splits": list(splits), "unseen": "sorted(random.Random(seed).sample(range(10), 3))",
                           "train_per_class": cfg.data.train_per_class, "test_per_class": cfg.data.test_per_class,
                           "image_size": cfg.towers.image_size,
                           "training": "seen classes of the train set only; GZSL gamma from a pseudo-unseen split of seen classes"},
              "results": rows, "wall_seconds": round(time.time() - t0, 1), "env": environment()}
    path = out / "fashion-zsl.json"
    path.write_text(json.dumps(result, indent=2))
    return path
