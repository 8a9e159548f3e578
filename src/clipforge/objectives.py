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

from .config import LossConfig
from .losses import clip_loss, multi_positive_infonce, multilabel_loss, pair_loss
from .model import DualEncoder


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


def make_step(model: DualEncoder, data: ClassBatchData, cfg: LossConfig):
    """Return ``step(batch_index_tensor) -> loss`` for the configured objective."""
    M = data.membership
    seen_t = torch.tensor(data.seen)
    if cfg.kind == "multilabel":
        def step(idx):
            logits = _member_logits(model, data.image_feats[idx], model.embed_text_features(data.text_feats))
            return multilabel_loss(logits, M[data.labels[idx]]) * logits.shape[0]
        return step
    if cfg.kind == "class-softmax":
        remap = torch.full((M.shape[0],), -1, dtype=torch.long)
        remap[seen_t] = torch.arange(len(data.seen))
        def step(idx):
            t = model.embed_text_features(data.text_feats)               # (V, D)
            proto = F.normalize(M[seen_t] @ t, dim=-1)                   # (C_seen, D)
            logits = _member_logits(model, data.image_feats[idx], proto)
            target = F.one_hot(remap[data.labels[idx]], len(data.seen)).float()
            return sum(multi_positive_infonce(l, target) for l in logits)
        return step
    if cfg.kind == "batch-clip":
        def step(idx):
            y = data.labels[idx]
            caption = torch.multinomial(M[y], 1).squeeze(1)                # one description of each image's class
            t = model.embed_text_features(data.text_feats)[caption]
            positives = (y[:, None] == y[None, :]).float()
            scale = 2.0 if cfg.reduction == "sum" else 1.0
            return sum(scale * clip_loss(l, positives) for l in _member_logits(model, data.image_feats[idx], t))
        return step
    if cfg.kind == "pair":
        def step(idx):
            y = data.labels[idx]
            pos = torch.multinomial(M[y], 1).squeeze(1)
            neg = torch.multinomial(pair_negative_weights(M, data.seen, y), 1).squeeze(1)
            t = model.embed_text_features(data.text_feats)
            labels = torch.cat([torch.ones(len(idx)), -torch.ones(len(idx))])
            loss = 0.0
            for z in model.image_head.members_forward(data.image_feats[idx]):
                a = torch.cat([z, z])
                b = torch.cat([t[pos], t[neg]])
                scores = model.similarity.pair(a, b)
                loss = loss + pair_loss(scores, labels, cfg.pair_variant, cfg.margin)
            return loss
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
