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

A third row, ``clipforge-default-caption-config``, is the caption config exactly as packaged (full batch of 628
pairs, three MLP heads, 200 epochs in a real run; ``default_epochs`` of them here): its seconds per epoch, the
matmul FLOPs of one epoch (forward + backward, counted from the ops that run: bench/flops.py), the GFLOP/s that
gives, and the machine's own square-matmul GFLOP/s measured in the same process on the same threads just before
and after, so the share of the FLOP limit the training reaches is a measured ratio. The load average is recorded
beside it: the machine is shared, and a loaded core slows every row.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.env import environment


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def default_config_row(towers, source: str, fold: int, epochs: int, image_size: int, tmp: Path, overrides: list[str],
                       log) -> dict:
    """The packaged caption config (no batch-size override): seconds per epoch, FLOPs, GFLOP/s vs the machine's."""
    from clipforge.pipelines import captions as caption
    from clipforge.config import CaptionRunConfig, build_config
    from benchmarks.flops import count_flops, matmul_gflops

    def config(n_epochs: int, name: str):
        return build_config(CaptionRunConfig, {}, [f"data.source={source}", f"data.fold={fold}", f"train.epochs={n_epochs}",
                                                   f"towers.image_size={image_size}", f"cache_dir={tmp / 'cache'}",
                                                   f"out={tmp / name}", *overrides])
    cfg = config(epochs, "default")
    load_before = _load()
    p = caption.prepare(cfg, progress=False, towers=towers)
    one = config(1, "default-flops")
    counted = caption.build_model(one, p)                 # built outside the counter: the bridge embeds 1000 names
    flops = count_flops(lambda: caption.train(one, p, counted, progress=False))
    log(f"default caption config: {flops / 1e9:.2f} GFLOP per epoch; training {epochs} epochs ...")
    model = caption.build_model(cfg, p)
    mm_before = matmul_gflops()
    trainer = caption.train(cfg, p, model, progress=False)
    mm_after = matmul_gflops()
    per_epoch = [h["seconds"] for h in trainer.state.history]
    sec = statistics.median(per_epoch)
    machine = max(mm_before["median_gflops"], mm_after["median_gflops"])
    achieved = flops / sec / 1e9
    metrics, _ = caption.evaluate(model, p.test, p.image_cached, n_examples=0)
    log(f"  {sec:.4f} s/epoch, {achieved:.1f} GFLOP/s = {100 * achieved / machine:.0f}% of the machine's {machine:.1f}")
    return {"method": "clipforge-default-caption-config",
            "metrics": {"seconds_per_epoch": sec, "seconds_per_epoch_all": [round(v, 5) for v in per_epoch],
                        "flops_per_epoch": flops, "achieved_gflops": round(achieved, 1),
                        "machine_matmul_gflops": machine, "percent_of_machine_matmul": round(100 * achieved / machine, 1),
                        "final_loss": trainer.state.history[-1]["loss"], f"MR_after_{epochs}_epochs": metrics["MR"]},
            "params": {"config": "caption-train as packaged: " + ", ".join(
                           [f"head {cfg.head.kind} {cfg.head.hidden} hidden", f"ensemble {cfg.train.ensemble}",
                            f"batch_size {cfg.train.batch_size} (full batch)", f"loss {cfg.loss.kind}",
                            f"bridge.alpha {cfg.bridge.alpha}"]),
                       "n_train_texts": len(p.train.texts), "epochs_timed": epochs,
                       "steps_per_epoch": trainer.steps_per_epoch,
                       "flops": "matmul FLOPs of one epoch, forward + backward, counted by torch FlopCounterMode "
                                "(2*m*n*k per matmul that runs)",
                       "machine_matmul": {"before": mm_before, "after": mm_after,
                                          "used": "the higher of the two medians"},
                       "load_average_1_5_15": {"before": load_before, "after": _load()}}}


def run_train_cache_bench(out: str | Path, epochs: int = 3, batch_size: int = 128, fold: int = 0,
                          source: str = "tux-paint", image_size: int = 224, overrides: list[str] = (),
                          log=print, default_epochs: int = 30) -> Path:
    """``overrides``: extra ``section.field=value`` settings for both runs (defaults: the caption run config)."""
    from clipforge.pipelines import captions as caption
    from clipforge.config import CaptionRunConfig, build_config
    from clipforge.towers import build_tower

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
        if default_epochs:
            rows.append(default_config_row(towers, source, fold, default_epochs, image_size, Path(tmp), list(overrides), log))
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
                     "acceptance": "cached >= 100x faster per epoch at equal accuracy; the default caption config "
                                   "<= 0.2 s per epoch and >= 40% of the machine's measured matmul GFLOP/s"},
        "results": rows,
        "speedup_per_epoch": round(speedup, 1),
        "mr_abs_difference": mr_diff,
        "wall_seconds": round(time.time() - t_start, 1), "load_average_1_5_15_at_end": _load(), "env": environment(),
    }
    path = out / "train-cache.json"
    path.write_text(json.dumps(result, indent=1))
    return path
