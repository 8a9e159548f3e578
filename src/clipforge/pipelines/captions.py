"""Image-caption alignment, the train stage: CLIP / SigLIP / LiT on pairs, then retrieval on the held-out part.

Steps (each a function, so the benchmark and the tests reuse them):
  1. ``prepare`` (pipelines/caption_data.py): load the source, decode or embed every image once (bad ones
     skipped and reported), split off the held-out fold (or the separate valid set), embed captions;
  2. ``build_model``: towers (locked = cached features; unlocked = trained, last N blocks if asked), heads,
     the ConSE label bridge;
  3. ``train``: the objective of contrastive.py under the Trainer (per-module learning rates, warmup+cosine,
     autocast, gradient caching, checkpoints + resume, DDP under torchrun);
  4. ``run``: all of it, then retrieval metrics and examples (pipelines/caption_eval.py), the saved model and
     results JSON.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from clipforge.config import CaptionRunConfig
from clipforge.errors import ClipforgeError
from clipforge.losses.contrastive import CaptionBatch, CaptionObjective, CaptionPairs, kornia_augment
from clipforge.model.dual_encoder import DualEncoder
from clipforge.pipelines.caption_data import Prepared, Side, prepare  # noqa: F401 - Side: the stage's face
from clipforge.pipelines.caption_eval import evaluate
from clipforge.train.distributed import World, init_distributed, wrap
from clipforge.train.trainer import ParamGroup, Trainer, seed_everything
from clipforge.embed.concepts import attach_concept_bridge


def _load_heads(model: DualEncoder, state: dict, where: str) -> None:
    """Start the heads (and temperature) from ``state``; every tensor must fit (same head config and ensemble)."""
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if not k.startswith(("image_tower.", "text_tower.", "bridge.")) and k not in state]
    if bad or missing:
        raise ClipforgeError(f"the init model '{where}' does not fit this run's heads (keep the head section and "
                             f"train.ensemble of the init model): shape mismatch {bad[:3]}, missing {missing[:3]}")
    model.load_state_dict({k: v for k, v in state.items() if k in own and not k.startswith("bridge.")}, strict=False)


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
    attach_concept_bridge(model, p.text_tower, cfg.bridge, cfg.cache_dir)
    if p.init_state is not None:
        _load_heads(model, p.init_state, cfg.init or "init")
    return model


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
    augment = kornia_augment(p.image_tower.input_size) if t.augment else None
    side = p.train
    pairs = CaptionPairs(side.images, side.text_feats if p.text_cached else side.texts, side.owners)
    objective = CaptionObjective(model, cfg.loss.kind, cfg.loss.reduction, p.image_cached, p.text_cached, augment,
                                 t.precision, cfg.loss.pair_variant, pairs, t.batch_size, t.seed, world)
    if objective.batch_size < 2 * world.size:
        raise ClipforgeError(f"train.batch_size gives {objective.batch_size} pairs per step over {world.size} "
                             "processes; need at least 2 per process")
    step_module = wrap(objective, world)
    scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" and torch.cuda.is_available() else None
    out = Path(cfg.out) / "checkpoints" if world.is_main else None
    trainer = Trainer(objective, param_groups(cfg, model), t.epochs, objective.steps_per_epoch, out, t.warmup_steps,
                      t.grad_clip, t.log_every, progress and world.is_main, tensorboard=world.is_main,
                      checkpoint_every=t.checkpoint_every, scaler=scaler)

    def step(batch: CaptionBatch) -> torch.Tensor:
        if t.accum_steps > 1:
            return objective.cached_gradient_step(batch, math.ceil(len(batch) / t.accum_steps))
        return step_module(batch)

    seed_everything(t.seed)
    trainer.fit(objective.batches, step, resume=resume)
    return trainer


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
