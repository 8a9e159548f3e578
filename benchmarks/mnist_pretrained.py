"""MNIST by text prompts with the packaged PRETRAINED towers: the issue-8 methods side by side on one set of features.

The from-scratch rows of ``bench mnist`` learn both towers. These rows freeze EfficientNet-Lite0 (its native
224 px; digits inverted to dark-on-light, as the Fashion-MNIST default does) and all-MiniLM-L6-v2, and differ
only in how the two feature spaces are joined: the same methods and code as the fashion-zsl suite. Every digit
is seen in training: MNIST's protocol is 10-way classification of held-out digits by their prompts, not
zero-shot on new classes, so ``linear-probe`` here is simply the supervised classifier on the same features.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np

from clipforge.pipelines import classes as align
from clipforge.evaluate.baselines import BASELINES
from clipforge.embed.cache import EmbeddingCache, embed_images, embed_texts
from clipforge.config import load_config
from clipforge.data import SkipReport
from clipforge.data.descriptions import from_templates
from clipforge.evaluate.zeroshot import topk_metrics
from clipforge.towers import build_tower
from benchmarks.methods import METHODS

IMAGE, TEXT = "pkg:efficientnet-lite0", "pkg:all-MiniLM-L6-v2"
# Row name -> the fashion-zsl method it runs (``pretrained-clipforge`` is clipforge's default head and objective).
PRETRAINED = {"pretrained-clipforge": "clipforge", "seed-pair-siamese": "seed-pair-siamese",
              "seed-contrastive": "seed-contrastive", "conse": "conse", "procrustes": "procrustes",
              "least-squares": "least-squares", "asif": "asif", "linear-probe": "linear-probe"}


def _embed(tower, x: np.ndarray, cache: EmbeddingCache, name: str) -> np.ndarray:
    fp = f"{name}:" + hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
    return cache.get_or_compute(tower, fp, lambda: embed_images(tower, x, progress=False)).features


def prepare_digits(split, templates: list[str], cache_dir: str) -> align.Prepared:
    """Frozen-tower features of the digits and of every digit's prompt ensemble, as the align pipeline holds them."""
    image = build_tower(IMAGE, "image", invert=True).lock()
    text = build_tower(TEXT, "text").lock()
    cache = EmbeddingCache(cache_dir)
    desc = from_templates(list(split.class_names), templates)
    vocab = desc.vocabulary()
    classes = list(range(len(split.class_names)))
    return align.Prepared(list(split.class_names), classes, [], _embed(image, split.train_x, cache, "mnist-train"),
                          split.train_y, _embed(image, split.test_x, cache, "mnist-test"), split.test_y, desc, vocab,
                          embed_texts(text, vocab, cache), image, text, SkipReport(),
                          {"image_size": image.input_size, "invert": True})


def run_pretrained(row: str, p: align.Prepared, cache_dir: str) -> dict:
    """One row: train (or fit) on every training digit, classify the test digits among all ten by prompts."""
    from benchmarks.fashion_zsl import fit_baseline
    from clipforge.embed.concepts import conse_inputs
    method = PRETRAINED[row]
    cfg = load_config(None, [*METHODS.get(method, []), f"cache_dir={cache_dir}"])
    t0 = time.time()
    if method == "linear-probe":
        from clipforge.evaluate.probe import linear_probe
        top1 = linear_probe(p.train_x, p.train_y, p.test_x, p.test_y, p.seen)
        return {"metrics": {"top1": top1}, "train_seconds": round(time.time() - t0, 1),
                "setting": "supervised: a logistic regression on the image features, no text"}
    if method in BASELINES:
        kw = conse_inputs(p.image_tower, p.text_tower, "a {}.", cfg.cache_dir) if method == "conse" else {}
        scores = fit_baseline(method, p, p.seen, kw)(p.test_x)
    else:
        model = align.train_model(cfg, p, progress=False)
        scores = align.class_scores(model, p, p.test_x)
    m = topk_metrics(scores, p.test_y, p.seen)
    out = {"metrics": {"top1": m["top1"], "mean_per_class_recall": m["mean_per_class_recall"], "top5": m.get("top5")},
           "train_seconds": round(time.time() - t0, 1),
           "confusion": {"labels": list(p.class_names), "matrix": m["confusion"]}}
    if method == "conse":
        out["note"] = "training-free (the image tower's ImageNet head)"
    return out
