"""The from-scratch objective (MNIST-style CLIP): both towers train, each image against one random caption of
its class, CLIP's symmetric InfoNCE over the batch.

Two images of one class in a batch are POSITIVES of each other's captions (``positives`` of their labels), so
batches need not be class-balanced; the seed's ``arange`` targets punished the right answer. Each distinct caption
goes through the text tower once per step.
"""
from __future__ import annotations

import torch

from clipforge.losses.functional import clip_loss
from clipforge.losses.objective import Objective


def caption_index(labels: torch.Tensor, n_templates: int, generator: torch.Generator) -> torch.Tensor:
    """A random caption per image: index into the class-major vocabulary (class c, template t) -> c * T + t."""
    return labels * n_templates + torch.randint(n_templates, labels.shape, generator=generator)


class ScratchObjective(Objective):
    """``x``: prepared images (N, C, H, W); ``y``: labels; captions are class-major (class c, template t).
    ``caption_feats``: features of a frozen pretrained text tower (else ``caption_inputs``, the tokenised
    captions, go through the trainable tower every step)."""

    def __init__(self, model, x: torch.Tensor, y: torch.Tensor, n_templates: int, batch_size: int, seed: int,
                 caption_feats: torch.Tensor | None = None, caption_inputs: dict | None = None,
                 augment: bool = False):
        super().__init__(model, len(y), batch_size, seed, image_cached=False, text_cached=caption_feats is not None)
        self.x, self.y, self.n_templates = x, y, n_templates
        self.caption_feats, self.caption_inputs = caption_feats, caption_inputs
        self.use_augment = augment and model.image_tower.has_augment
        self.generator = torch.Generator().manual_seed(seed)

    def text_for(self, which: torch.Tensor) -> torch.Tensor:
        """Embeddings of the captions ``which`` (indices into the class-major captions), with gradients."""
        m = self.model
        if self.caption_feats is not None:
            feats = self.caption_feats[which]
        else:
            feats = m.text_tower({k: v[which] for k, v in self.caption_inputs.items()})
        return m.embed_text_features(feats)

    def loss_of(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of prepared images ``x`` with labels ``y`` (one random caption of each image's class)."""
        m = self.model
        if self.use_augment:
            x = m.image_tower.augment(x, generator=self.generator)
        img = m.embed_image_features(m.image_tower(x))
        cap = caption_index(y, self.n_templates, self.generator)
        uniq, inv = torch.unique(cap, return_inverse=True)    # each distinct caption through the tower once
        return clip_loss(m.logits(img, self.text_for(uniq)[inv]), self.positives(y))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.loss_of(self.x[idx], self.y[idx])
