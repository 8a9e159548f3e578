"""Tux Paint retrieval protocol (docs/benchmarks.md): 5 folds of the captioned stamps by a fixed seed; train on
four, R@1/5/10 both ways and MR on the fifth. Methods share towers and cached features; clipforge is row 1.

``seed-contrastive`` re-creates the seed "Contrastive" objective on the same towers: a linear image
projection onto the text tower's pooled output (no text projection), fixed temperature 0.07, the two
cross-entropies summed, no ConSE bridge, one head. ``seed-pair-siamese`` is the seed "Pretrained_Model_Alignment":
one right and one wrong caption per image, a shared Siamese MLP as the similarity. ``conse``, ``procrustes``, ``least-squares``, ``asif`` and ``csa``
are the closed-form baselines of baselines.py on the same cached features.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from clipforge.evaluate import baselines as baselines

from clipforge.pipelines import captions as caption
from clipforge.evaluate.baselines import BASELINES
from clipforge.evaluate.retrieval import retrieval_metrics
from clipforge.config import CaptionRunConfig, build_config
from clipforge.data.captions import folds
from clipforge.embed.concepts import conse_inputs
from benchmarks.env import environment

CAPTION_METHODS: dict[str, list[str]] = {
    "clipforge": [],
    "seed-contrastive": ["head.kind=linear", "head.dropout=0", "head.input_dropout=0", "head.init_temperature=0.07",
                         "head.learn_temperature=false", "loss.reduction=sum", "bridge.alpha=0", "train.ensemble=1",
                         "train.lr=1e-2", "train.weight_decay=1e-2"],
    # The seed "Pretrained_Model_Alignment" on captions: one right and one wrong caption per image, L1 to +1/-1,
    # a shared Siamese |a-b| MLP on top of a linear image projection (as in the fashion-zsl suite).
    "seed-pair-siamese": ["loss.kind=pair", "loss.pair_variant=l1", "head.similarity=siamese", "head.siamese_shared=true",
                          "head.kind=linear", "head.dropout=0", "head.input_dropout=0", "bridge.alpha=0",
                          "train.ensemble=1", "train.lr=1e-3", "train.epochs=300", "train.batch_size=256"],
}
FOLDS = [0, 1, 2, 3, 4]
RECALLS = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)]


def baseline_fold(method: str, cfg: CaptionRunConfig, p: caption.Prepared) -> dict:
    """A closed-form baseline (baselines.py) fitted on the training pairs' cached features, scored on the held-out fold."""
    kw = {}
    if method == "conse":
        kw = conse_inputs(p.image_tower, p.text_tower, cfg.bridge.template, cfg.cache_dir)
    b = baselines.make(method, **kw).fit(p.train.images[p.train.owners], p.train.text_feats)
    return retrieval_metrics(b.image_embed(p.test.images), b.text_embed(p.test.text_feats), p.test.owners)


def method_overrides(name: str) -> list[str]:
    from clipforge.errors import ClipforgeError
    if name in BASELINES:
        return []
    if name not in CAPTION_METHODS:
        raise ClipforgeError(f"unknown retrieval method '{name}'; choose from {sorted(CAPTION_METHODS) + list(BASELINES)}")
    return CAPTION_METHODS[name]


def run_tux_retrieval(out: str | Path, methods: list[str], overrides: list[str] = (), fold_ids=FOLDS,
                      progress: bool = False, suite: str = "tux-retrieval") -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    towers, rows = None, []
    scratch = tempfile.TemporaryDirectory(prefix="clipforge-bench-")  # checkpoints of the per-fold runs: not results
    for method in methods:
        per_fold, first = [], None
        for fold in fold_ids:
            cfg = build_config(CaptionRunConfig, {}, [*method_overrides(method), *overrides, f"data.fold={fold}",
                                                      f"out={Path(scratch.name) / method / str(fold)}"])
            ts = time.time()
            p = caption.prepare(cfg, progress=progress, towers=towers)
            towers = (p.image_tower, p.text_tower)
            if method in BASELINES:
                m, ex, history = baseline_fold(method, cfg, p), None, None
            else:
                model = caption.build_model(cfg, p)
                trainer = caption.train(cfg, p, model, progress=progress)
                (m, ex), history = caption.evaluate(model, p.test, p.image_cached), trainer.state.history
            m["train_seconds"] = round(time.time() - ts, 2)
            per_fold.append(m)
            first = first or ({"examples": ex, "history": history} if ex else {})
            print(f"{suite} {method} fold {fold}: MR {m['MR']:.3f}", flush=True)
        keys = [*RECALLS, "MR"]
        rows.append({"method": method, "overrides": method_overrides(method),
                     "metrics": {k: float(np.mean([f[k] for f in per_fold])) for k in keys},
                     "std": {k: float(np.std([f[k] for f in per_fold])) for k in keys},
                     "per_fold": per_fold, **first})
    scratch.cleanup()
    cfg = build_config(CaptionRunConfig, {}, list(overrides))
    result = {"suite": suite, "dataset": cfg.data.source, "language": cfg.data.language, "task": "zeroshot_retrieval",
              "model": f"{cfg.towers.image} + {cfg.towers.text}",
              "protocol": {"folds": list(fold_ids), "k": cfg.data.folds, "split_seed": cfg.data.split_seed,
                           "split": "numpy RandomState(split_seed).permutation(n)[i::k] of the captioned non-mirror PNGs",
                           "image_size": cfg.towers.image_size,
                           "metric_names": "image_to_text_R@k: an image's caption in the top k texts; "
                                           "text_to_image_R@k: a caption's image in the top k images; MR = mean of the six"},
              "results": rows, "wall_seconds": round(time.time() - t0, 1), "env": environment()}
    path = out / f"{suite}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return path


__all__ = ["run_tux_retrieval", "CAPTION_METHODS", "folds"]
