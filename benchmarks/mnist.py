"""MNIST by text prompts (docs/benchmarks.md): CLIPs trained from scratch, 10-way zero-shot-style
classification of the held-out digits against each digit's prompt ensemble.

Methods (the clipforge default first):
* ``clipforge``: both towers from scratch (``scratch:cnn-small`` + ``scratch:text-small``);
* ``scratch-cnn+frozen-minilm``: the same image tower from scratch, text by the packaged, frozen
  ``pkg:all-MiniLM-L6-v2`` with a trained linear text head;
* the pretrained-tower rows of ``mnist_pretrained.py`` (frozen EfficientNet-Lite0 + MiniLM, joined by
  clipforge's head, the two seeds' objectives, ConSE, Procrustes, least squares, ASIF; and the linear probe).

Besides metrics, each result carries the report's figure data (see ``clipforge.evaluate.report``):
confusion, per-class recall, an images x texts similarity matrix, retrieval examples in both directions
(thumbnails written as PNG files beside the JSON, paths relative to it) and the training history.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from clipforge.data.mnist import DigitSplit, load_mnist, load_small_digits
from clipforge.errors import ClipforgeError
from clipforge.pipelines.scratch import ScratchClipConfig, probe_indices, train_and_evaluate
from benchmarks.env import environment

METHODS: dict[str, dict] = {
    "clipforge": dict(image_tower="scratch:cnn-small", text_tower="scratch:text-small"),
    "scratch-cnn+frozen-minilm": dict(image_tower="scratch:cnn-small", text_tower="pkg:all-MiniLM-L6-v2"),
}
# The smoke variant (sklearn 8x8 digits, tiny towers): seconds, for tests and trying the pipeline.
SMOKE = dict(image_tower="scratch:cnn-tiny", text_tower="scratch:text-tiny", epochs=6, batch_size=64, warmup_steps=10)
IMAGES = "mnist-images"
QUERY_TEMPLATE = "a handwritten {}."


def _save_png(x: np.ndarray, path: Path) -> None:
    from PIL import Image
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(path)


def figure_data(clip, split: DigitSplit, scores: np.ndarray, metrics: dict, out: Path, n_image_queries: int = 6) -> dict:
    """The report's figure data for one method (images written under ``out/mnist-images``)."""
    names, y = split.class_names, split.test_y
    conf = metrics["confusion"]
    per_class = {names[c]: (conf[c][c] / max(1, sum(conf[c]))) for c in range(len(names))}
    p = probe_indices(y)
    sim = {"rows": [f"{names[int(y[i])]} #{int(i)}" for i in p], "cols": list(names),
           "matrix": np.round(scores[p], 4).tolist()}

    def img(i: int) -> str:
        rel = f"{IMAGES}/test-{int(i):04d}.png"
        _save_png(split.test_x[i], out / rel)
        return rel

    # text -> image: one plain prompt per digit against every test image
    prompts = [QUERY_TEMPLATE.format(n) for n in names]
    image_emb = clip.model.encode_image(split.test_x, batch_size=256)
    text_emb = clip.model.encode_text(prompts)
    t2i = text_emb @ image_emb.T                                             # (C, N)
    examples = []
    for c, q in enumerate(prompts):
        top = np.argsort(-t2i[c])[:5]
        examples.append({"direction": "text_to_image", "query": q,
                         "top": [{"image": img(i), "score": round(float(t2i[c, i]), 4), "hit": bool(y[i] == c)}
                                 for i in top]})
    # image -> text: some of the mistakes (the interesting ones) and some correct digits
    pred = scores.argmax(1)
    wrong, right = np.flatnonzero(pred != y), np.flatnonzero(pred == y)
    n_wrong = min(n_image_queries // 2, len(wrong))
    spread = np.linspace(0, len(right) - 1, n_image_queries - n_wrong).astype(int) if len(right) else []
    chosen = [*wrong[:n_wrong], *right[spread]]
    i2t = image_emb @ text_emb.T                                             # (N, C)
    for i in chosen:
        top = np.argsort(-i2t[i])[:5]
        examples.append({"direction": "image_to_text", "query": {"image": img(i), "label": names[int(y[i])]},
                         "top": [{"text": prompts[c], "score": round(float(i2t[i, c]), 4), "hit": bool(c == y[i])}
                                 for c in top]})
    return {"confusion": {"labels": list(names), "matrix": conf}, "per_class": per_class, "similarity": sim,
            "examples": examples}


def run_mnist(out: str | Path, methods: list[str] = tuple(METHODS), epochs: int | None = None,
              logs: str | Path | None = "runs/mnist", smoke: bool = False, progress: bool = False,
              cache_dir: str = ".cache/clipforge", smoke_per_class: int | None = None) -> Path:
    """Train and evaluate every method on the fixed split; write ``out/mnist.json`` (+ example thumbnails).
    ``smoke_per_class`` (smoke only) keeps N digits of each class: the pretrained rows embed every image at 224 px."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from benchmarks.mnist_pretrained import PRETRAINED, prepare_digits, run_pretrained
    unknown = [m for m in methods if m not in METHODS and m not in PRETRAINED]
    if unknown:
        raise ClipforgeError(f"unknown MNIST method(s) {unknown}; choose from {list(METHODS) + list(PRETRAINED)}")
    t0, load_start = time.time(), os.getloadavg()
    split = load_small_digits(per_class=smoke_per_class) if smoke else load_mnist()
    t_data = time.time() - t0
    rows, pretrained = [], None
    for method in methods:
        if method in PRETRAINED:
            t_row = time.time()
            if pretrained is None:
                pretrained = prepare_digits(split, ScratchClipConfig().templates, cache_dir)
            r = run_pretrained(method, pretrained, cache_dir)
            rows.append({"method": method, "image_tower": pretrained.image_tower.tower_id,
                         "text_tower": pretrained.text_tower.tower_id, **r,
                         "wall_seconds": round(time.time() - t_row, 1)})
            print(f"{method}: top-1 {r['metrics']['top1']:.4f} ({rows[-1]['wall_seconds']:.0f} s)", flush=True)
            continue
        cfg = ScratchClipConfig(**{**METHODS[method], **(SMOKE if smoke else {})})
        if smoke:
            cfg = replace(cfg, text_tower=METHODS[method]["text_tower"].replace("text-small", "text-tiny"))
        if epochs:
            cfg = replace(cfg, epochs=epochs)
        run_dir = Path(logs) / method if logs else None
        r = train_and_evaluate(split, cfg, out_dir=run_dir, progress=progress)
        clip, m = r["clip"], r["metrics"]
        t_fig = time.time()
        scores = clip.scores(split.test_x)
        figures = figure_data(clip, split, scores, m, out)
        if run_dir is not None:
            clip.model.save_pretrained(run_dir / "model")
        rows.append({"method": method, "image_tower": cfg.image_tower, "text_tower": cfg.text_tower,
                     "metrics": {"top1": m["top1"], "mean_per_class_recall": m["mean_per_class_recall"],
                                 "top5": m.get("top5")},
                     "wall_seconds": round(r["seconds"], 1), "train_seconds": round(r["train_seconds"], 1),
                     "figure_seconds": round(time.time() - t_fig, 1), "config": asdict(cfg),
                     **figures, "history": r["history"]})
        print(f"{method}: top-1 {m['top1']:.4f}  mean per-class recall {m['mean_per_class_recall']:.4f}  "
              f"({r['seconds']:.0f} s)", flush=True)
    result = {"suite": "mnist", "dataset": "mnist" if not smoke else "sklearn-digits",
              "task": "zeroshot_classification",
              "model": f"{rows[0]['image_tower']} + {rows[0]['text_tower']}" if rows else "",
              "protocol": {"source": split.source, "split": split.split, **{f"n_{k}": v for k, v in split.sizes.items()},
                           "classes": split.class_names, "image_size": int(split.train_x.shape[-1]),
                           "evaluation": "N-way classification of the test images: cosine to each class's prompt "
                                         "ensemble (every training template, embeddings averaged)",
                           "training": "image + caption pairs, caption = random template of the image's class; "
                                       "symmetric InfoNCE with same-class pairs as positives; logits = cos / T",
                           "history_val": "top-1 on the test images after each epoch: a curve only, "
                                          "the last epoch's model is the one evaluated",
                           "templates": ScratchClipConfig().templates},
              "results": rows, "data_seconds": round(t_data, 1), "wall_seconds": round(time.time() - t0, 1),
              "env": {**environment(), "load_average_1_5_15min": {"start": [round(v, 2) for v in load_start],
                                                                   "end": [round(v, 2) for v in os.getloadavg()]}}}
    path = out / "mnist.json"
    tmp = out / ".mnist.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    return path
