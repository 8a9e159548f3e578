"""``clipforge bench train-cache``: seconds per epoch of head training on cached features vs re-encoding every step.

Both runs train the same caption model (caption.py: MLP heads, CLIP loss, the default run config) on the same
data (Tux Paint English captions, the training part of fold ``fold``), with the same seed, for the same epochs:

* ``clipforge-cached``: the locked towers embed every image and caption once (the embedding cache, fast path),
  then each epoch trains the heads on those features;
* ``lit-reencode``: ``train.cache_features=false``: the locked towers re-encode every image and caption at every
  step, as open_clip's LiT training does (``lock_image=True`` still runs the tower's forward each step).

The towers are locked and in eval mode in both runs, so the features, dropout masks and updates are the same up
to float noise: the held-out retrieval metrics must agree, which the JSON shows. Per-epoch seconds come from
the Trainer's history (the epoch's batches, forwards, backwards and updates); the one-time costs (embedding
the data for the cached run, decoding it for the re-encoding run) are reported beside them.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from .env import environment


def run_train_cache_bench(out: str | Path, epochs: int = 3, batch_size: int = 128, fold: int = 0,
                          source: str = "tux-paint", image_size: int = 224, overrides: list[str] = (),
                          log=print) -> Path:
    """``overrides``: extra ``section.field=value`` settings for both runs (defaults: the caption run config)."""
    from .. import caption
    from ..config import CaptionRunConfig, build_config
    from ..towers import build_tower

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    rows, runs = [], {}
    with tempfile.TemporaryDirectory(prefix="clipforge-bench-train-cache-") as tmp:
        base = [f"data.source={source}", f"data.fold={fold}", f"train.epochs={epochs}", f"train.batch_size={batch_size}",
                f"towers.image_size={image_size}", f"cache_dir={Path(tmp) / 'cache'}", *overrides]
        cfg0 = build_config(CaptionRunConfig, {}, base)
        towers = (build_tower(cfg0.towers.image, "image", cfg0.towers.image_size, cfg0.towers.invert),
                  build_tower(cfg0.towers.text, "text"))
        for method, cached in (("clipforge-cached", True), ("lit-reencode", False)):
            cfg = build_config(CaptionRunConfig, {}, base + [f"train.cache_features={str(cached).lower()}",
                                                             f"out={Path(tmp) / method}"])
            log(f"{method}: preparing ...")
            t0 = time.perf_counter()
            p = caption.prepare(cfg, progress=False, towers=towers)
            model = caption.build_model(cfg, p)
            t_prep = time.perf_counter() - t0
            log(f"{method}: training {epochs} epochs ...")
            t0 = time.perf_counter()
            trainer = caption.train(cfg, p, model, progress=False)
            t_train = time.perf_counter() - t0
            metrics, _ = caption.evaluate(model, p.test, p.image_cached, n_examples=0)
            per_epoch = [h["seconds"] for h in trainer.state.history]
            runs[method] = {"per_epoch": per_epoch, "metrics": metrics}
            log(f"  {statistics.median(per_epoch):.4f} s/epoch, MR {metrics['MR']:.4f}")
            rows.append({"method": method,
                         "metrics": {"seconds_per_epoch": statistics.median(per_epoch),
                                     "seconds_per_epoch_all": [round(s, 5) for s in per_epoch],
                                     "one_time_prepare_seconds": round(t_prep, 2),
                                     "train_seconds": round(t_train, 2),
                                     "seconds_to_train_including_prepare": round(t_prep + t_train, 2),
                                     "final_loss": trainer.state.history[-1]["loss"],
                                     **{k: v for k, v in metrics.items() if k not in ("n_images", "n_texts")}},
                         "params": {"image_features": "cached (embedded once)" if p.image_cached else "re-encoded every step",
                                    "text_features": "cached (embedded once)" if p.text_cached else "re-encoded every step",
                                    "n_train_images": len(p.train.ds), "n_train_texts": len(p.train.texts),
                                    "n_test_images": metrics["n_images"], "n_test_texts": metrics["n_texts"],
                                    "steps_per_epoch": trainer.steps_per_epoch}})
    c, r = runs["clipforge-cached"], runs["lit-reencode"]
    speedup = statistics.median(r["per_epoch"]) / statistics.median(c["per_epoch"])
    mr_diff = abs(c["metrics"]["MR"] - r["metrics"]["MR"])
    rows[0]["metrics"]["speedup_per_epoch_vs_reencode"] = round(speedup, 1)
    result = {
        "suite": "train-cache", "task": "head_training_speed", "dataset": f"{source} English captions, fold {fold} held out",
        "model": f"{cfg0.towers.image} @ {image_size} px + {cfg0.towers.text} (locked), caption run config defaults",
        "protocol": {"epochs": epochs, "batch_size": batch_size, "seed": cfg0.train.seed,
                     "per_epoch": "median over epochs of the Trainer's per-epoch seconds (batches, forward, backward, update)",
                     "equal_accuracy": "same seed and data; both runs' held-out retrieval metrics are listed and must agree "
                                       "(MR within 0.01) since the arithmetic is the same up to float noise",
                     "acceptance": "cached >= 100x faster per epoch at equal accuracy"},
        "results": rows,
        "speedup_per_epoch": round(speedup, 1),
        "mr_abs_difference": mr_diff,
        "wall_seconds": round(time.time() - t_start, 1), "env": environment(),
    }
    path = out / "train-cache.json"
    path.write_text(json.dumps(result, indent=1))
    return path
