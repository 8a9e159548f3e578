"""Cross-dataset zero-shot (docs/benchmarks.md): train on packaged caption pairs, then classify the classes of a
set the model never trained on, by their names only.

Targets and what each is trained on:
  emoji-categories     emoji's 10 Unicode categories                      <- Tux Paint stamps + captions
  emoji-subcategories  emoji's subcategories with >= 10 images            <- Tux Paint
  tux-paint-categories Tux Paint's 16 stamp folders                       <- emoji + their Unicode names
  fashion-mnist        Fashion-MNIST's 10 classes (protocol test images)  <- Tux Paint + emoji
  mnist                MNIST's 10 digits by name ("zero" ... "nine")      <- Tux Paint + emoji

Every method sees the same cached features: the clipforge default caption model (``clipforge train`` with the
packaged caption config: pipelines/captions.py build_model + train) and the closed-form baselines of
baselines.py fitted on the same pairs. Class names become prompts through the one zero-shot classifier
(evaluate/zeroshot.py ``zero_shot_classifier``, data/prompts.py templates) for every method. A training image
whose image-tower feature has cosine > 0.95 with any target image is left out of that target's training set
(the count is in the JSON), so a stamp drawn in both sets cannot pass for transfer.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipforge.config import CaptionRunConfig, build_config
from clipforge.data.captions import load_caption_source
from clipforge.data.dataset import CaptionDataset
from clipforge.embed.cache import EmbeddingCache, embed_images, embed_texts
from clipforge.errors import ClipforgeError
from clipforge.evaluate import baselines
from clipforge.evaluate.zeroshot import topk_metrics, zero_shot_classifier
from clipforge.model.heads import CosineSimilarity
from clipforge.pipelines import captions as caption
from clipforge.towers import build_tower
from clipforge.embed.concepts import conse_inputs
from benchmarks.env import environment

DUPLICATE_COSINE = 0.95
MIN_SUBCATEGORY_IMAGES = 10
METHODS = ("clipforge", "conse", "procrustes", "least-squares", "asif", "csa")
TARGETS = {"emoji-categories": ("tux-paint",), "emoji-subcategories": ("tux-paint",),
           "tux-paint-categories": ("emoji",), "fashion-mnist": ("tux-paint", "emoji"), "mnist": ("tux-paint", "emoji")}
KEYS = ("acc1", "acc5", "mean_per_class_recall")
SOURCES = {"tux-paint": "tux-paint", "emoji": "emoji"}      # name -> caption source spec (tests point them elsewhere)


@dataclass
class Target:
    name: str
    dataset: str
    class_names: list[str]
    feats: np.ndarray              # image-tower features of the target images
    labels: np.ndarray
    tower: object                  # the image tower that made ``feats`` (grey sets are inverted, as in fashion-zsl)


@dataclass
class Source:
    """One caption set's pairs on cached features."""
    ds: CaptionDataset
    feats: np.ndarray              # (n_images, D)


def near_duplicates(train: np.ndarray, target: np.ndarray, threshold: float = DUPLICATE_COSINE,
                    chunk: int = 2048) -> np.ndarray:
    """Boolean mask over ``train``: True where a training feature has cosine > ``threshold`` with any target one."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True).clip(1e-12)
    b = target / np.linalg.norm(target, axis=1, keepdims=True).clip(1e-12)
    best = np.full(len(a), -np.inf, dtype=np.float32)
    for i in range(0, len(b), chunk):
        if len(a):
            best = np.maximum(best, (a @ b[i:i + chunk].T).max(1))
    return best > threshold


def class_name(label: str) -> str:
    """A Unicode emoji group as words: 'Smileys & Emotion' -> 'smileys and emotion', 'face-smiling' -> 'face smiling'."""
    return " ".join(label.replace("&", " and ").replace("-", " ").lower().split())


def _subsample(n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    idx = np.arange(n)
    return idx if not limit or limit >= n else np.sort(np.random.RandomState(seed).permutation(n)[:limit])


def _array_feats(tower, x: np.ndarray, cache: EmbeddingCache, name: str) -> np.ndarray:
    fp = f"{name}:" + hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
    return cache.get_or_compute(tower, fp, lambda: embed_images(tower, x, progress=False)).features


def load_source(spec: str, tower, cache: EmbeddingCache, limit: int | None) -> Source:
    """A caption set (its bad images skipped and reported by the loader/embedder) on cached features."""
    ds = load_caption_source(spec)
    ds = ds.subset(_subsample(len(ds), limit))
    emb = cache.get_or_compute(tower, ds.fingerprint(), lambda: embed_images(tower, ds.paths, progress=False))
    for item, reason in emb.skipped:
        ds.skipped.add(item, reason)
    return Source(ds.subset(emb.kept), emb.features)


def _caption_target(name: str, src: Source, labels: list[str], min_images: int = 1) -> Target:
    """Class labels of a caption set's images; classes with fewer than ``min_images`` are left out."""
    counts = {c: labels.count(c) for c in dict.fromkeys(labels)}
    classes = [c for c in counts if c and counts[c] >= min_images]
    keep = np.array([i for i, c in enumerate(labels) if c in classes], dtype=np.int64)
    y = np.array([classes.index(labels[i]) for i in keep], dtype=np.int64)
    return Target(name, src.ds.name, classes, src.feats[keep], y, None)


def load_target(name: str, sources: dict, specs: dict, towers: dict, cache: EmbeddingCache, limit: int | None) -> Target:
    if name in ("emoji-categories", "emoji-subcategories"):
        from clipforge.data.emoji import emoji_groups
        groups, src = emoji_groups(), sources["emoji"]
        level = 0 if name == "emoji-categories" else 1
        labels = [class_name(groups.get(p.name, ("", ""))[level]) for p in src.ds.paths]
        t = _caption_target(name, src, labels, 1 if level == 0 else MIN_SUBCATEGORY_IMAGES)
    elif name == "tux-paint-categories":
        from clipforge.data.tux_paint import stamp_category
        src = sources["tux-paint"]
        root = specs["tux-paint"].partition(":")[2] or None
        t = _caption_target(name, src, [stamp_category(p, root) for p in src.ds.paths])
    elif name == "fashion-mnist":
        from clipforge.data.fashion_mnist import load_fashion_mnist
        ds = load_fashion_mnist("test").per_class(200, 1)        # the fashion-zsl protocol's test images
        idx = _subsample(len(ds), limit)
        x, y = ds.images[idx], ds.labels[idx]
        return Target(name, "fashion-mnist", list(ds.class_names), _array_feats(towers["grey"], x, cache, "fashion-test"),
                      y, towers["grey"])
    elif name == "mnist":
        from clipforge.data.mnist import load_mnist
        split = load_mnist()
        idx = _subsample(len(split.test_y), limit)
        x, y = split.test_x[idx], split.test_y[idx]
        return Target(name, "mnist", list(split.class_names), _array_feats(towers["grey"], x, cache, "mnist-test"),
                      y, towers["grey"])
    else:
        raise ClipforgeError(f"unknown transfer target '{name}'; choose from {sorted(TARGETS)}")
    idx = _subsample(len(t.labels), limit, seed=1)
    t.feats, t.labels, t.tower = t.feats[idx], t.labels[idx], towers["colour"]
    return t


def training_pairs(parts: list[Source], target: Target, text_tower, cache: EmbeddingCache) -> tuple[caption.Side, list[str]]:
    """The training side for one target: the sources' images minus near-duplicates of the target's, with every
    caption of each kept image; and the images left out."""
    feats = np.concatenate([s.feats for s in parts])
    paths = [p for s in parts for p in s.ds.paths]
    caps = [c for s in parts for c in s.ds.captions]
    dup = near_duplicates(feats, target.feats)
    keep = np.flatnonzero(~dup)
    ds = CaptionDataset("+".join(s.ds.name for s in parts), [paths[i] for i in keep], [caps[i] for i in keep])
    texts, owners = ds.pairs()
    feats_txt = embed_texts(text_tower, texts, cache) if texts else np.zeros((0, 1), np.float32)
    return caption.Side(ds, feats[keep], texts, owners, feats_txt), [str(paths[i]) for i in np.flatnonzero(dup)]


class _CachedText:
    """The text tower as ZeroShotClassifier calls it, its sentence features through the embedding cache."""

    def __init__(self, tower, cache: EmbeddingCache):
        self.tower, self.cache = tower, cache

    def encode(self, texts, batch_size: int = 64):
        return embed_texts(self.tower, list(texts), self.cache, batch_size)


class _Joint:
    """What zero_shot_classifier needs of a model (a text tower, embed_text_features, a similarity), for a trained
    model or a closed-form baseline alike, so every method's classes are built by the same code."""

    def __init__(self, text_tower, embed_text_features, similarity):
        self.text_tower, self.embed_text_features, self.similarity = text_tower, embed_text_features, similarity


def _metrics(scores: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    m = topk_metrics(scores, y, list(range(n_classes)))
    return {"acc1": m["top1"], "acc5": m.get("top5"), "mean_per_class_recall": m["mean_per_class_recall"]}


def ratio_of(default: dict, conse: dict) -> dict:
    """default / ConSE per metric (None where ConSE scored 0 or lacks the metric): how far training on pairs
    gets beyond the training-free label bridge."""
    return {k: (v / conse[k] if conse.get(k) else None) for k, v in default.items()}


def train_default(cfg: CaptionRunConfig, side: caption.Side, towers: tuple, progress: bool):
    p = caption.Prepared(side, None, towers[0], towers[1], image_cached=True, text_cached=True)
    model = caption.build_model(cfg, p)
    caption.train(cfg, p, model, progress=progress)
    return model.eval()


def score_method(method: str, cfg: CaptionRunConfig, side: caption.Side, target: Target, text_tower,
                 cache: EmbeddingCache, models: dict, towers: tuple, progress: bool) -> np.ndarray:
    """(n_target_images, n_classes) scores of one method trained (or fitted) on ``side``."""
    text = _CachedText(text_tower, cache)
    if method == "clipforge":
        key = id(side)
        if key not in models:
            models[key] = train_default(cfg, side, towers, progress)
        model = models[key]
        zs = zero_shot_classifier(_Joint(text, model.embed_text_features, model.similarity), target.class_names)
        with torch.inference_mode():
            return zs.scores(model.embed_image_features(torch.from_numpy(target.feats)))
    kw = {}
    if method == "conse":
        kw = conse_inputs(target.tower, text_tower, cfg.bridge.template, cache)
    b = baselines.make(method, **kw).fit(side.images[side.owners], side.text_feats)
    joint = _Joint(text, lambda f: torch.from_numpy(b.text_embed(np.asarray(f, np.float32))), CosineSimilarity())
    return zero_shot_classifier(joint, target.class_names).scores(b.image_embed(target.feats))


def run_transfer(out: str | Path, methods: list[str], overrides: list[str] = (), targets: list[str] | None = None,
                 limit: int | None = None, progress: bool = False, sources: dict[str, str] | None = None) -> Path:
    """Every target x every method; ``limit`` caps images per source and per target (quick looks, tests);
    ``sources`` replaces a training source's spec (``{"tux-paint": "tux-paint:<dir>"}``)."""
    specs = {**SOURCES, **(sources or {})}
    targets = list(TARGETS) if targets is None else list(targets)
    bad = [m for m in methods if m not in METHODS] + [t for t in targets if t not in TARGETS]
    if bad or not methods or not targets:
        raise ClipforgeError(f"bench transfer: unknown or missing {bad or 'methods/targets'}; methods are "
                             f"{list(METHODS)}, targets {list(TARGETS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    scratch = tempfile.TemporaryDirectory(prefix="clipforge-transfer-")        # checkpoints: not results
    cfg = build_config(CaptionRunConfig, {}, [*overrides, f"out={scratch.name}"])
    cache = EmbeddingCache(cfg.cache_dir)
    image = build_tower(cfg.towers.image, "image", cfg.towers.image_size, cfg.towers.invert)
    grey = build_tower(cfg.towers.image, "image", cfg.towers.image_size, True)
    text = build_tower(cfg.towers.text, "text")
    for t in (image, grey, text):
        t.lock()
    towers = {"colour": image, "grey": grey}
    needed = {s for t in targets for s in TARGETS[t]} | {"emoji" for t in targets if t.startswith("emoji")} | \
             {"tux-paint" for t in targets if t.startswith("tux-paint")}
    loaded = {s: load_source(specs[s], image, cache, limit) for s in sorted(needed)}
    per_target, models, sides = [], {}, {}
    for name in targets:
        target = load_target(name, loaded, specs, towers, cache, limit)
        parts = [loaded[s] for s in TARGETS[name]]
        key = (TARGETS[name], hashlib.sha256(np.ascontiguousarray(target.feats).tobytes()).hexdigest())
        if key not in sides:                   # emoji categories and subcategories share images: one training set
            sides[key] = training_pairs(parts, target, text, cache)
        side, dups = sides[key]
        info = {"target": name, "dataset": target.dataset, "trained_on": list(TARGETS[name]),
                "class_names": target.class_names, "n_classes": len(target.class_names),
                "n_images": int(len(target.labels)), "n_train_images": len(side.ds), "n_train_texts": len(side.texts),
                "near_duplicates_removed": len(dups), "near_duplicates_examples": dups[:20]}
        if len(side.ds) < 2 or len(target.class_names) < 2:      # nothing to learn from, or nothing to choose
            info["skipped"] = (f"{len(side.ds)} training images left after removing near-duplicates"
                               if len(side.ds) < 2 else f"{len(target.class_names)} class(es) in the target")
            per_target.append(info)
            print(f"transfer {name}: skipped ({info['skipped']})", flush=True)
            continue
        rows = []
        for method in methods:
            ts = time.time()
            m = _metrics(score_method(method, cfg, side, target, text, cache, models, (image, text), progress),
                         target.labels, len(target.class_names))
            rows.append({"method": method, "metrics": m, "seconds": round(time.time() - ts, 2)})
            print(f"transfer {name} {method}: acc1 {m['acc1']:.3f}", flush=True)
        per_target.append({**info, "results": rows})
    scratch.cleanup()
    summary = []
    scored = [t for t in per_target if "results" in t]
    for method in methods:
        per = {t["target"]: next(r["metrics"] for r in t["results"] if r["method"] == method) for t in scored}
        mean = {k: float(np.mean([v[k] for v in per.values() if v[k] is not None])) for k in KEYS
                if any(v[k] is not None for v in per.values())}
        summary.append({"method": method, "metrics": mean, "per_target": per})
    ratio = None
    if "clipforge" in methods and "conse" in methods:
        ratio = ratio_of(summary[methods.index("clipforge")]["metrics"], summary[methods.index("conse")]["metrics"])
    result = {"suite": "transfer", "task": "zeroshot_classification", "model": f"{cfg.towers.image} + {cfg.towers.text}",
              "protocol": {"targets": {t: {"trained_on": list(s)} for t, s in TARGETS.items() if t in targets},
                           "near_duplicate": f"a training image with image-tower cosine > {DUPLICATE_COSINE} to any "
                                             "target image is left out of that target's training set",
                           "prompts": "class names through zero_shot_classifier (data/prompts.py templates)",
                           "subcategories": f"emoji subcategories with >= {MIN_SUBCATEGORY_IMAGES} images",
                           "image_size": cfg.towers.image_size, "limit": limit,
                           "grey_targets": "Fashion-MNIST and MNIST inverted to dark-on-light, as fashion-zsl does"},
              "skipped": {n: {"count": len(src.ds.skipped), "examples": [list(i) for i in src.ds.skipped.items[:10]]}
                          for n, src in loaded.items()},
              "targets": per_target, "results": summary, "ratio_default_to_conse": ratio,
              "wall_seconds": round(time.time() - t0, 1), "env": environment()}
    path = out / "transfer.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return path


__all__ = ["run_transfer", "near_duplicates", "class_name", "ratio_of", "TARGETS", "METHODS", "DUPLICATE_COSINE"]
