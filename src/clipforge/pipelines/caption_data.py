"""Stage 1 of caption training: load the source, decode or embed every image once (bad ones skipped and
reported), split off the held-out fold (or the separate valid set), embed captions; and the ``init`` model a
run may start from (stage 2 of distillation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipforge.config import CaptionRunConfig
from clipforge.data.captions import CaptionDataset, folds, load_caption_source
from clipforge.data.dataset import concat_captions
from clipforge.data.images import load_image
from clipforge.embed.cache import EmbeddingCache, embed_images, embed_texts
from clipforge.errors import ClipforgeError
from clipforge.model.dual_encoder import DualEncoder
from clipforge.towers import build_tower


@dataclass
class Side:
    """One split: its dataset, image inputs (features or decoded images), captions and their owners."""
    ds: CaptionDataset
    images: object
    texts: list[str]
    owners: np.ndarray
    text_feats: np.ndarray | None = None


@dataclass
class Prepared:
    train: Side
    test: Side | None
    image_tower: object
    text_tower: object
    image_cached: bool
    text_cached: bool
    init_state: dict | None = None  # head weights to start from (config field ``init``)


def load_sources(spec: str | list[str], caption_field: str = "txt") -> CaptionDataset:
    """One caption source, or a list of them as one set (``data.source: [tux-paint, emoji]``)."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise ClipforgeError("config field 'data.source' is an empty list; name at least one caption source")
    return concat_captions([load_caption_source(s, caption_field) for s in specs])


def _decode_all(ds: CaptionDataset, size: int) -> tuple[list, np.ndarray]:
    """Decode every image once (resized, kept in memory) for runs that re-encode images each step."""
    images, kept = [], []
    for i, p in enumerate(ds.paths):
        img, reason = load_image(p)
        if img is None:
            ds.skipped.add(str(p), reason)
            continue
        images.append(img.resize((size, size)))
        kept.append(i)
    return images, np.asarray(kept, dtype=np.int64)


def split_indices(ds: CaptionDataset, cfg: CaptionRunConfig) -> tuple[np.ndarray, np.ndarray | None]:
    if cfg.data.fold is None or cfg.data.valid_source:
        return np.arange(len(ds)), None
    if cfg.data.fold >= cfg.data.folds:
        raise ClipforgeError(f"config field 'data.fold' is {cfg.data.fold} but there are {cfg.data.folds} folds (0..{cfg.data.folds - 1})")
    held = folds(len(ds), cfg.data.folds, cfg.data.split_seed)[cfg.data.fold]
    return np.setdiff1d(np.arange(len(ds)), held), held


def side_of(ds: CaptionDataset, images, idx: np.ndarray, lang: str) -> Side:
    """The split ``idx`` of ``ds`` with captions in ``lang`` (images without one are left out of this side)."""
    sub = ds.subset(idx)
    keep = np.arange(len(sub))
    if lang != "en" or "en" in sub.translations:
        local = sub.in_language(lang)
        keep = np.asarray([i for i, caps in enumerate(sub.captions_in(lang)) if caps], dtype=np.int64)
        sub = local
    rows = np.asarray(idx)[keep]
    imgs = images[rows] if isinstance(images, np.ndarray) else [images[i] for i in rows]
    texts, owners = sub.pairs()
    return Side(sub, imgs, texts, owners)


def images_of(ds: CaptionDataset, tower, cached: bool, cache: EmbeddingCache, size: int, progress: bool):
    """Cached features (locked tower) or decoded images of ``ds``; undecodable ones dropped and reported."""
    if cached:
        emb = cache.get_or_compute(tower, ds.fingerprint(), lambda: embed_images(tower, ds.paths, progress=progress))
        for item, reason in emb.skipped:
            ds.skipped.add(item, reason)
        return ds.subset(emb.kept), emb.features
    images, kept = _decode_all(ds, size)
    return ds.subset(kept), images


def prepare(cfg: CaptionRunConfig, progress: bool = True, towers: tuple | None = None) -> Prepared:
    init = _load_init(cfg) if cfg.init and towers is None else None
    if init is not None:
        towers = (init.image_tower, init.text_tower)
    image_tower, text_tower = towers or (build_tower(cfg.towers.image, "image", cfg.towers.image_size, cfg.towers.invert),
                                         build_tower(cfg.towers.text, "text"))
    image_cached = cfg.towers.lock_image and not cfg.train.augment and cfg.train.cache_features
    text_cached = cfg.towers.lock_text and cfg.train.cache_features
    cache = EmbeddingCache(cfg.cache_dir)
    size = image_tower.input_size
    full, images = images_of(load_sources(cfg.data.source, cfg.data.caption_field), image_tower, image_cached, cache, size, progress)
    if len(full) < 2:
        raise ClipforgeError(f"caption source '{cfg.data.source}' has {len(full)} usable images; at least 2 are needed")
    train_idx, test_idx = split_indices(full, cfg)
    train = side_of(full, images, train_idx, cfg.data.language)
    test = side_of(full, images, test_idx, cfg.data.language) if test_idx is not None else None
    if cfg.data.valid_source:
        vds, vimages = images_of(load_sources(cfg.data.valid_source, cfg.data.caption_field), image_tower, image_cached, cache, size, progress)
        test = side_of(vds, vimages, np.arange(len(vds)), cfg.data.language)
        for item in vds.skipped.items:
            full.skipped.add(*item)
    for side in (train, test):
        if side is not None and text_cached:
            side.text_feats = embed_texts(text_tower, side.texts, cache)
    if not train.texts:
        raise ClipforgeError(f"no training captions in language '{cfg.data.language}' in '{cfg.data.source}'")
    init_state = {k: v for k, v in init.state_dict().items() if not k.startswith(("image_tower.", "text_tower."))} \
        if init is not None else None
    return Prepared(train, test, image_tower, text_tower, image_cached, text_cached, init_state)


def _load_init(cfg: CaptionRunConfig) -> DualEncoder:
    """The model named by ``init`` (stage 2 of distillation); its image size must be the run's."""
    init = DualEncoder.from_pretrained(cfg.init)
    size = init.tower_opts.get("image_size")
    if size is not None and size != cfg.towers.image_size:
        raise ClipforgeError(f"config field 'towers.image_size' is {cfg.towers.image_size} but the init model "
                             f"'{cfg.init}' was trained at {size}; set towers.image_size={size}")
    return init
