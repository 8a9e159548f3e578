"""Stage 1 of the main job: datasets, the seen/unseen split, towers, cached features of images and descriptions.

Everything later stages need is in ``Prepared``, so the benchmark prepares a split once and trains many methods
on it. The datasets stay in it too: a fine-tune of the image tower's last blocks (pipelines/finetune.py) needs the
images, not only their features.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipforge.config import RunConfig
from clipforge.data import ClassDataset, ClassDescriptions, SkipReport, load_descriptions, seen_unseen
from clipforge.data.sources import load_class_source
from clipforge.embed.cache import EmbeddingCache, embed_dataset, embed_texts
from clipforge.errors import ClipforgeError
from clipforge.towers import build_tower


@dataclass
class Prepared:
    class_names: list[str]
    seen: list[int]
    unseen: list[int]
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    descriptions: ClassDescriptions
    vocab: list[str]
    vocab_feats: np.ndarray
    image_tower: object
    text_tower: object
    skipped: SkipReport
    tower_opts: dict
    train_ds: ClassDataset | None = None   # the images behind train_x / test_x (kept items only)
    test_ds: ClassDataset | None = None


def prepare(cfg: RunConfig, progress: bool = True, towers: tuple | None = None) -> Prepared:
    train_ds, test_ds, fixed_unseen = load_class_source(cfg.data.source, cfg.data.seed)
    names = train_ds.class_names
    if fixed_unseen and not cfg.data.unseen:
        seen, unseen = [c for c in range(len(names)) if c not in fixed_unseen], sorted(fixed_unseen)
    else:
        seen, unseen = seen_unseen(names, cfg.data.n_unseen, cfg.data.split_seed, cfg.data.unseen)
    train_ds = train_ds.per_class(cfg.data.train_per_class, cfg.data.seed)
    test_ds = test_ds.per_class(cfg.data.test_per_class, cfg.data.seed + 1)
    invert = train_ds.grey_light_on_dark if cfg.towers.invert is None else cfg.towers.invert
    tower_opts = {"image_size": cfg.towers.image_size, "invert": invert}
    if towers is None:
        image_tower = build_tower(cfg.towers.image, "image", **tower_opts)
        text_tower = build_tower(cfg.towers.text, "text")
    else:
        image_tower, text_tower = towers
    image_tower.lock()
    text_tower.lock()
    # The size the tower really uses (its native one when the config says null), so a saved model records it.
    tower_opts["image_size"] = image_tower.input_size or cfg.towers.image_size
    cache = EmbeddingCache(cfg.cache_dir)
    tr_x, tr_y = embed_dataset(image_tower, train_ds, cache, progress=progress)
    te_x, te_y = embed_dataset(image_tower, test_ds, cache, progress=progress)
    _require_images(cfg.data.source, "training", int(np.isin(tr_y, seen).sum()), train_ds.skipped)
    _require_images(cfg.data.source, "test", len(te_y), test_ds.skipped)
    desc = load_descriptions(names, cfg.data.descriptions, dataset=cfg.data.source)
    vocab = desc.vocabulary()
    vocab_feats = embed_texts(text_tower, vocab, cache)
    # Folder sources split one dataset, so train and test may share one report: count each item once.
    skipped = train_ds.skipped if test_ds.skipped is train_ds.skipped else \
        SkipReport(train_ds.skipped.items + test_ds.skipped.items)
    return Prepared(names, seen, unseen, tr_x, tr_y, te_x, te_y, desc, vocab, vocab_feats,
                    image_tower, text_tower, skipped, tower_opts, train_ds, test_ds)


def _require_images(source: str, part: str, n: int, skipped: SkipReport) -> None:
    """No usable image is an error: a model trained on nothing (or scored on nothing) has NaN metrics and looks
    like a result."""
    if n:
        return
    first = f"; e.g. {skipped.items[0][0]}: {skipped.items[0][1]}" if skipped.items else ""
    raise ClipforgeError(f"no usable {part} images in '{source}' ({len(skipped)} items skipped{first})")
