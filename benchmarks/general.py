"""The general model's held-out check (docs/benchmarks.md): the ``general`` recipe (every packaged caption set,
English + Chinese captions, a frozen multilingual text tower) trained with one fold of 5 held out, then retrieval
on that fold with English captions and with Chinese captions as queries. The all-data model a user trains with
``clipforge train -c general`` is this recipe with ``data.fold=null``; this suite is what says it works in both
languages (zh MR >= 0.95 x en MR) before anyone trains it on everything.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from benchmarks.env import environment
from clipforge.config import CaptionEvalConfig, CaptionRunConfig, load_config
from clipforge.pipelines import captions as caption
from clipforge.pipelines.caption_eval import evaluate_saved

KEYS = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)] + ["MR"]


def run_fold(fold: int, work: Path, overrides: list[str]) -> dict:
    cfg = load_config("general", [f"data.fold={fold}", f"out={work / f'fold{fold}'}", *overrides], cls=CaptionRunConfig)
    t0 = time.time()
    caption.run(cfg, progress=False)
    row = {"fold": fold, "train_seconds": round(time.time() - t0, 1)}
    for lang in ("en", "zh"):
        ev = load_config(None, [f"model={cfg.out}/model", f"data.language={lang}", f"data.fold={fold}",
                                f"data.folds={cfg.data.folds}", f"data.split_seed={cfg.data.split_seed}",
                                f"out={work / f'fold{fold}' / f'eval-{lang}.json'}", f"cache_dir={cfg.cache_dir}"],
                         cls=CaptionEvalConfig)
        ev = ev.model_copy(update={"data": ev.data.model_copy(update={"source": cfg.data.source})})
        m = evaluate_saved(ev)["metrics"]
        row[lang] = {k: m[k] for k in KEYS if k in m} | {"n_images": m["n_images"], "n_texts": m["n_texts"]}
    row["mr_ratio_zh_en"] = row["zh"]["MR"] / max(row["en"]["MR"], 1e-12)
    return row


def run_general(out: str | Path, folds: list[int], overrides: list[str] = ()) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out.parent / "general-runs" if out.name == "results" else out / "general-runs"
    t0 = time.time()
    rows = []
    for f in folds:
        rows.append(run_fold(f, work, list(overrides)))
        r = rows[-1]
        print(f"fold {f}: MR en {r['en']['MR']:.3f}  zh {r['zh']['MR']:.3f}  ratio {r['mr_ratio_zh_en']:.3f}",
              flush=True)
    cfg = load_config("general", list(overrides), cls=CaptionRunConfig)
    mean = {lang: float(np.mean([r[lang]["MR"] for r in rows])) for lang in ("en", "zh")}
    result = {"suite": "general", "dataset": "+".join(cfg.data.source), "task": "zeroshot_retrieval",
              "model": f"{cfg.towers.image} + {cfg.towers.text}",
              "protocol": {"folds": folds, "k": cfg.data.folds, "split_seed": cfg.data.split_seed,
                           "training": "the general config (en+zh captions of every packaged set), the fold held out",
                           "queries": "held-out fold: English captions, then zh captions (images without one left out)"},
              "results": [{"method": "clipforge-general", "overrides": list(overrides),
                           "metrics": {"MR_en": mean["en"], "MR_zh": mean["zh"],
                                       "mr_ratio_zh_en": mean["zh"] / max(mean["en"], 1e-12)},
                           "per_fold": rows}],
              "wall_seconds": round(time.time() - t0, 1), "env": environment()}
    path = out / "general.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return path
