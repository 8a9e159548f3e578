"""Class-aware objectives: seen-class images against class descriptions (locked or fine-tuned image tower).

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
from clipforge.losses.functional import (members_clip_loss, multi_positive_infonce, multilabel_loss, pair_loss,
                                         structure_loss)
from clipforge.losses.objective import Objective
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


class ClassDescriptionObjective(Objective):
    """Seen-class images against seen-class descriptions: ``multilabel``, ``class-softmax`` or ``batch-clip``
    (module docstring). Every head's loss comes from one batched op over (K, B, ...) logits, summed over heads
    (``* K``) as the per-head sum it replaces. ``image_inputs`` are cached features, or the image tower's trunk
    activations when its last ``image_trunk_blocks`` blocks train."""

    def __init__(self, model: DualEncoder, data: ClassBatchData, cfg: LossConfig, batch_size: int = 0, seed: int = 0,
                 image_trunk_blocks: int = 0, image_inputs: torch.Tensor | None = None):
        super().__init__(model, len(data.labels), batch_size, seed, image_cached=not image_trunk_blocks,
                         image_trunk_blocks=image_trunk_blocks)
        if cfg.kind not in ("multilabel", "class-softmax", "batch-clip", "pair"):
            raise ValueError(f"unknown loss kind {cfg.kind!r}")
        self.data, self.cfg = data, cfg
        self.inputs = data.image_feats if image_inputs is None else image_inputs
        self.M, self.seen_t = data.membership, torch.tensor(data.seen)
        self._everything = torch.arange(len(data.labels))
        # nothing in the description embeddings trains without a text head: compute them once. Training never
        # sees the concept bridge (it has no parameters; it is blended into the scores afterwards)
        self._fixed_text = model.embed_text_features(data.text_feats, with_bridge=False) if model.text_head is None else None
        self._remap = torch.full((self.M.shape[0],), -1, dtype=torch.long)
        self._remap[self.seen_t] = torch.arange(len(data.seen))

    def text(self) -> torch.Tensor:
        if self._fixed_text is not None:
            return self._fixed_text
        return self.model.embed_text_features(self.data.text_feats, with_bridge=False)

    def inputs_of(self, idx: torch.Tensor) -> torch.Tensor:
        """The batch's image inputs; the full batch without a gathered copy."""
        full = len(idx) == len(self.inputs) and torch.equal(idx, self._everything)
        return self.inputs if full else self.inputs[idx]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        drawn = self.draw(idx)              # before the images: their dropout draws from the same generator
        feats = self.image_features(self.inputs_of(idx))
        z = self.model.image_head.members_forward(feats)                    # (K, B, D)
        loss = self.fit_loss(idx, z, drawn)
        if self.cfg.structure_weight > 0:
            loss = loss + self.cfg.structure_weight * self.structure(feats, z)
        return loss * len(z)

    def draw(self, idx: torch.Tensor):
        """The batch's random description choices: one description of each image's class (``batch-clip``)."""
        if self.cfg.kind == "batch-clip":
            return torch.multinomial(self.M[self.data.labels[idx]], 1).squeeze(1)
        return None

    def fit_loss(self, idx: torch.Tensor, z: torch.Tensor, drawn) -> torch.Tensor:
        """The configured objective of the batch ``idx`` whose image embeddings are ``z``, averaged over heads."""
        y, kind = self.data.labels[idx], self.cfg.kind
        if kind == "multilabel":
            return multilabel_loss(self.model.logits(z, self.text()), self.M[y])
        if kind == "class-softmax":
            proto = F.normalize(self.M[self.seen_t] @ self.text(), dim=-1)  # (C_seen, D)
            target = F.one_hot(self._remap[y], len(self.data.seen)).float()
            return multi_positive_infonce(self.model.logits(z, proto), target)
        t = self.text()[drawn]
        scale = 2.0 if self.cfg.reduction == "sum" else 1.0
        return scale * members_clip_loss(self.model.logits(z, t), self.positives(y))

    def structure(self, feats: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The STRUCTURE term on a random subset of the batch (``loss.structure_sample`` images): neighbourhoods
        of the standardised tower features (what the head reads) against those of each head's embedding."""
        n = feats.shape[0]
        sub = torch.randperm(n)[:self.cfg.structure_sample] if n > self.cfg.structure_sample else slice(None)
        reference = self.model.image_head.standardised(feats)[sub]   # the step's own (kept) standardisation
        return structure_loss(reference, z[:, sub], self.cfg.structure_temperature)


class ClassPairObjective(ClassDescriptionObjective):
    """``pair``: each image with one description of its class (+1) and one of another SEEN class (-1)."""

    def draw(self, idx: torch.Tensor):
        y, M = self.data.labels[idx], self.M
        pos = torch.multinomial(M[y], 1).squeeze(1)
        neg = torch.multinomial(pair_negative_weights(M, self.data.seen, y), 1).squeeze(1)
        return pos, neg

    def fit_loss(self, idx: torch.Tensor, z: torch.Tensor, drawn) -> torch.Tensor:
        pos, neg = drawn
        t = self.text()
        labels = torch.cat([torch.ones(len(idx)), -torch.ones(len(idx))])
        scores = self.model.similarity.pair(torch.cat([z, z], 1), torch.cat([t[pos], t[neg]]))   # (K, 2B)
        return pair_loss(scores, labels.expand_as(scores), self.cfg.pair_variant, self.cfg.margin)


def class_objective(model: DualEncoder, data: ClassBatchData, cfg: LossConfig, batch_size: int = 0, seed: int = 0,
                    **kw) -> ClassDescriptionObjective:
    """The configured class objective (``loss.kind``)."""
    cls = ClassPairObjective if cfg.kind == "pair" else ClassDescriptionObjective
    return cls(model, data, cfg, batch_size, seed, **kw)
