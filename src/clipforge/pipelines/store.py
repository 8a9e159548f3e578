"""Caption heads trained from a feature store (embed/store.py): LiT at any N, in memory that does not grow with N.

The recipe is the caption pipeline's (pipelines/captions.py) with the cached-features path only: the towers are
the store's (rebuilt from their ids and checked against the fingerprints the store recorded), the heads and
objective are the caption config's (``ContrastiveObjective`` under the ``Trainer``), and the batches come from
``ShuffledBatches``, which reads the store a block at a time. What differs, and why:

* the heads' input normalisation is fitted on exact statistics computed a block at a time (``FeatureStore.stats``),
  because ``fit_normalizer`` wants the feature matrix and the whole matrix is what must not be loaded;
* ``train.batch_size: 0`` (one full batch) is refused: a store is for data that does not fit in one batch.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from clipforge.config import CaptionRunConfig
from clipforge.embed.store_reader import FeatureStore, ShuffledBatches
from clipforge.errors import ClipforgeError
from clipforge.losses.contrastive import CaptionBatch, ContrastiveObjective
from clipforge.model.dual_encoder import DualEncoder
from clipforge.towers import build_tower
from clipforge.train.trainer import ParamGroup, Trainer, seed_everything
from clipforge.embed.concepts import attach_concept_bridge


def store_towers(store: FeatureStore):
    """The store's towers, rebuilt from their ids; a fingerprint that differs means other features: refused."""
    m = store.manifest
    if m["text_tower"] is None:
        raise ClipforgeError(f"feature store '{store.root}' has image features only; training needs caption features "
                             "too: embed with --text-tower")
    img, txt = m["image_tower"], m["text_tower"]
    towers = (build_tower(img["id"], "image", img.get("image_size"), img.get("invert", False)),
              build_tower(txt["id"], "text"))
    for tower, rec in zip(towers, (img, txt)):
        if tower.fingerprint() != rec["fingerprint"]:
            raise ClipforgeError(f"tower '{rec['id']}' built here has fingerprint {tower.fingerprint()}, but the store "
                                 f"'{store.root}' was embedded with {rec['fingerprint']} (other preprocessing or "
                                 "version); re-embed the store with this tower")
        tower.lock()
    return towers


def _fit_normalizer(head, mean: np.ndarray, std: np.ndarray) -> None:
    """Fit the head's normaliser to exact statistics: the two rows mean +- std/sqrt(2) have exactly this mean and
    (unbiased) standard deviation, so ``fit_normalizer`` sees what it would see on the whole feature matrix."""
    m, s = torch.from_numpy(mean).float(), torch.from_numpy(std).float()
    head.fit_normalizer(torch.stack([m + s / math.sqrt(2), m - s / math.sqrt(2)]))


def build_model(cfg: CaptionRunConfig, store: FeatureStore) -> DualEncoder:
    image_tower, text_tower = store_towers(store)
    img = store.manifest["image_tower"]
    model = DualEncoder(image_tower, text_tower, cfg.head, cfg.train.ensemble, cfg.train.seed,
                        tower_opts={"image_size": img.get("image_size"), "invert": img.get("invert", False)})
    if cfg.loss.kind == "siglip" and cfg.head.init_bias is None and cfg.head.similarity == "cosine":
        model.similarity.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))  # SigLIP's init, as pipelines.captions
    _fit_normalizer(model.image_head, *store.stats("image"))
    if model.text_head is not None:
        _fit_normalizer(model.text_head, *store.stats("text"))
    attach_concept_bridge(model, text_tower, cfg.bridge, cfg.cache_dir)
    return model


def _groups(cfg: CaptionRunConfig, model: DualEncoder) -> list[ParamGroup]:
    t = cfg.train
    groups = [ParamGroup("image_head", model.image_head, t.lr, t.weight_decay),
              ParamGroup("similarity", model.similarity, t.lr_similarity or t.lr, 0.0)]
    if model.text_head is not None:
        groups.insert(1, ParamGroup("text_head", model.text_head, t.lr, t.weight_decay))
    return groups


def train_from_store(store_dir: str | Path, cfg: CaptionRunConfig | None = None, buffer_rows: int = 32768,
                     block_rows: int = 2048, progress: bool = False, resume: bool = False, save: bool = True) -> dict:
    """Train the caption heads of ``cfg`` (default: the packaged caption heads, batches of 1024) on the store at
    ``store_dir``; the model goes to ``cfg.out``/model, the history and timings to ``cfg.out``/results.json."""
    cfg = cfg or CaptionRunConfig(train={"batch_size": 1024}, out="runs/store")
    t = cfg.train
    if t.batch_size == 0:
        raise ClipforgeError("config field 'train.batch_size' is 0 (one full batch), which a feature store is too "
                             "large for; set train.batch_size (e.g. 1024)")
    if cfg.towers.lock_image is False or cfg.towers.lock_text is False or t.augment or t.accum_steps > 1:
        raise ClipforgeError("training from a feature store keeps both towers locked (towers.lock_image/lock_text "
                             "true), without train.augment or train.accum_steps > 1")
    t0 = time.time()
    store = FeatureStore(store_dir)
    bs = min(t.batch_size, store.n)
    if bs < 2:
        raise ClipforgeError(f"feature store '{store.root}' has {store.n} rows; at least 2 are needed")
    seed_everything(t.seed)
    model = build_model(cfg, store)
    objective = ContrastiveObjective(model, cfg.loss.kind, cfg.loss.reduction, True, True, None, t.precision,
                                     cfg.loss.pair_variant)
    reader = ShuffledBatches(store, bs, max(buffer_rows, bs), min(block_rows, max(buffer_rows, bs)), t.seed,
                             drop_last=True)
    out = Path(cfg.out)
    trainer = Trainer(objective, _groups(cfg, model), t.epochs, len(reader), out / "checkpoints" if save else None,
                      t.warmup_steps, t.grad_clip, t.log_every, progress, tensorboard=save,
                      checkpoint_every=t.checkpoint_every)

    def batches(epoch: int):
        for b in reader(epoch):
            yield CaptionBatch(torch.from_numpy(b.image.astype(np.float32)), torch.from_numpy(b.text.astype(np.float32)),
                               torch.from_numpy(b.rows))

    t1 = time.time()
    trainer.fit(batches, objective, resume=resume)
    result = {"store": str(store.root), "n_pairs": store.n, "batch_size": bs, "steps_per_epoch": len(reader),
              "model": f"{model.image_tower.tower_id} + {model.text_tower.tower_id}",
              "history": trainer.state.history, "shuffle": {"buffer_rows": reader.buffer_rows,
                                                             "block_rows": reader.block_rows,
                                                             "peak_rows_held": reader.peak_rows},
              "seconds": {"prepare": t1 - t0, "train": time.time() - t1}}
    if save:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out / "model")
        (out / "results.json").write_text(json.dumps(result, indent=1))
    return result


__all__ = ["train_from_store", "build_model", "store_towers"]
