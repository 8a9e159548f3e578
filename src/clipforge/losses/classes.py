"""Class-aware objectives on cached features: what one training step computes.

* ``multilabel`` (default): every image against every description of the seen classes, a sigmoid
  (SigLIP-style) per pair; a description shared by several classes is a positive for all of them.
* ``class-softmax``: softmax over the seen classes' prototype descriptions (multi-positive InfoNCE).
* ``pair``: the seed's objective, one correct and one wrong description per image, the wrong one
  drawn from the SEEN classes only (the seed leaked unseen classes into its negatives).
* ``batch-clip``: the seed "Contrastive" objective on class data: each image of the batch is paired with one
  random description of its class, CLIP's image x caption InfoNCE over the batch (same-class captions count
  as positives), the two directions summed or averaged (``reduction``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipforge.config import LossConfig
from clipforge.losses.contrastive import members_clip_loss
from clipforge.losses.functional import multi_positive_infonce, multilabel_loss, pair_loss
from clipforge.model.dual_encoder import DualEncoder


@dataclass
class ClassBatchData:
    """Seen-class training data: image features/labels, description features and class membership."""
    image_feats: torch.Tensor       # (N, Di)
    labels: torch.Tensor            # (N,) global class ids
    text_feats: torch.Tensor        # (V, Dt) descriptions of the seen classes
    membership: torch.Tensor        # (C_all, V) 0/1
    seen: list[int]


def pair_negative_weights(membership: torch.Tensor, seen: list[int], labels: torch.Tensor) -> torch.Tensor:
    """(B, V) weights of the wrong descriptions an image may draw: sentences of SEEN classes only,
    never one of its own class's sentences."""
    of_seen = (membership[torch.tensor(seen)].sum(0, keepdim=True) > 0).float()
    return of_seen * (1 - membership[labels])


def _member_logits(model: DualEncoder, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    z = model.image_head.members_forward(img)          # (K, B, D)
    return model.logits(z, txt)                         # (K, B, V)


def _text_fn(model: DualEncoder, feats: torch.Tensor):
    """The description embeddings for a step: computed once when nothing in them trains (no text head: they are
    the normalised text features), else at every step through the text head."""
    if model.text_head is None:
        fixed = model.embed_text_features(feats)
        return lambda: fixed
    return lambda: model.embed_text_features(feats)


def _images_fn(feats: torch.Tensor):
    """Image features of a batch; the full batch (``batches_fn`` yields ``arange(n)``) without a gathered copy."""
    everything = torch.arange(len(feats))
    return lambda idx: feats if len(idx) == len(feats) and torch.equal(idx, everything) else feats[idx]


def make_step(model: DualEncoder, data: ClassBatchData, cfg: LossConfig):
    """Return ``step(batch_index_tensor) -> loss`` for the configured objective. Every head's loss comes from
    one batched op over (K, B, ...) logits; summed over heads (``* K``) as the per-head sum it replaces."""
    M = data.membership
    seen_t = torch.tensor(data.seen)
    text, images = _text_fn(model, data.text_feats), _images_fn(data.image_feats)
    if cfg.kind == "multilabel":
        def step(idx):
            logits = _member_logits(model, images(idx), text())
            return multilabel_loss(logits, M[data.labels[idx]]) * logits.shape[0]
        return step
    if cfg.kind == "class-softmax":
        remap = torch.full((M.shape[0],), -1, dtype=torch.long)
        remap[seen_t] = torch.arange(len(data.seen))
        def step(idx):
            proto = F.normalize(M[seen_t] @ text(), dim=-1)              # (C_seen, D)
            logits = _member_logits(model, images(idx), proto)
            target = F.one_hot(remap[data.labels[idx]], len(data.seen)).float()
            return multi_positive_infonce(logits, target) * logits.shape[0]
        return step
    if cfg.kind == "batch-clip":
        def step(idx):
            y = data.labels[idx]
            caption = torch.multinomial(M[y], 1).squeeze(1)                # one description of each image's class
            t = text()[caption]
            positives = (y[:, None] == y[None, :]).float()
            scale = 2.0 if cfg.reduction == "sum" else 1.0
            logits = _member_logits(model, images(idx), t)
            return scale * members_clip_loss(logits, positives) * logits.shape[0]
        return step
    if cfg.kind == "pair":
        def step(idx):
            y = data.labels[idx]
            pos = torch.multinomial(M[y], 1).squeeze(1)
            neg = torch.multinomial(pair_negative_weights(M, data.seen, y), 1).squeeze(1)
            t = text()
            labels = torch.cat([torch.ones(len(idx)), -torch.ones(len(idx))])
            z = model.image_head.members_forward(images(idx))          # (K, B, D)
            scores = model.similarity.pair(torch.cat([z, z], 1), torch.cat([t[pos], t[neg]]))   # (K, 2B)
            return pair_loss(scores, labels.expand_as(scores), cfg.pair_variant, cfg.margin) * len(z)
        return step
    raise ValueError(f"unknown loss kind {cfg.kind!r}")


def batches_fn(n: int, batch_size: int, seed: int):
    """Shuffled index batches per epoch (one full batch when ``batch_size`` is 0)."""
    def batches(epoch: int):
        if not batch_size or batch_size >= n:
            yield torch.arange(n)
            return
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            yield perm[i:i + batch_size]
    return batches
