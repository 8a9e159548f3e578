"""The image-caption objective: CLIP (symmetric InfoNCE), SigLIP, or the seed "Pretrained_Model_Alignment"
pair loss over a batch of (image, caption) pairs.

One module owns the forward so DistributedDataParallel can wrap it (``loss = ddp(batch)``):

* each side comes either from cached features (a locked tower: LiT) or from the tower itself (an unlocked
  tower, or augmentation), under bf16/fp16 autocast when asked;
* every head of the ensemble gets its own loss, averaged; the K heads' logits come from one batched matmul and
  their losses from one batched op (``members_clip_loss``), no Python loop over heads;
* features are gathered across ranks with gradients, so negatives are the global batch's;
* positives are pairs with the same image id, so an image captioned twice in one batch is not its own
  negative;
* ``pair`` (a baseline, the seed's objective): each image against its own caption and ONE wrong caption drawn from
  the batch (a caption of another image), scores pushed to +1 / -1; with a Siamese similarity the scores are
  its pair scores, with cosine the cosines;
* ``cached_gradient_step`` splits a batch into micro-batches but keeps the whole batch's negatives
  (gradient caching, as open_clip's ``accum_freq``): embed everything without gradients, take the loss's
  gradient w.r.t. the embeddings, then re-run each micro-batch with gradients and push that slice through.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from clipforge.losses.functional import members_clip_loss, pair_loss, siglip_loss
from clipforge.losses.objective import Objective, autocast
from clipforge.train.distributed import World, gather_no_grad
from clipforge.util.extras import require


@dataclass
class CaptionBatch:
    """``images``: cached features (B, D) or PIL images; ``texts``: cached features or strings; ``owners``: image ids."""
    images: object
    texts: object
    owners: torch.Tensor

    def __len__(self) -> int:
        return len(self.owners)

    def slice(self, s: slice) -> "CaptionBatch":
        return CaptionBatch(self.images[s], self.texts[s], self.owners[s])


def _distributed() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass
class CaptionPairs:
    """A training split's pairs for ``batches``: image inputs per image (features array or decoded images),
    caption inputs per pair (features array or strings) and each pair's image id."""
    images: object
    texts: object
    owners: np.ndarray


class CaptionObjective(Objective):
    """Image-caption pairs: ``clip``, ``siglip`` or ``pair`` (module docstring). ``pairs`` gives ``batches`` its
    data; without it the objective scores batches built elsewhere (tests, the feature store)."""
    drop_last = True  # equal batches on every rank, and the last pairs are a different permutation next epoch

    def __init__(self, model, kind: str = "clip", reduction: str = "mean", image_cached: bool = True,
                 text_cached: bool = True, augment: nn.Module | None = None, precision: str = "fp32",
                 pair_variant: str = "l1", pairs: CaptionPairs | None = None, batch_size: int = 0, seed: int = 0,
                 world: World | None = None):
        if kind not in ("clip", "siglip", "pair"):
            raise ValueError(f"loss kind must be clip, siglip or pair, not {kind!r}")
        n = len(pairs.owners) if pairs is not None else 0
        super().__init__(model, n, batch_size, seed, world, image_cached, text_cached, augment=augment)
        self.kind, self.reduction, self.pair_variant, self.precision = kind, reduction, pair_variant, precision
        self.pairs = pairs

    def batch(self, idx: torch.Tensor) -> CaptionBatch:
        p, pair_idx = self.pairs, idx.numpy()
        owners = p.owners[pair_idx]
        images = torch.from_numpy(p.images[owners]) if self.image_cached else [p.images[i] for i in owners]
        texts = torch.from_numpy(p.texts[pair_idx]) if self.text_cached else [p.texts[i] for i in pair_idx]
        return CaptionBatch(images, texts, torch.from_numpy(owners))

    def embed(self, batch: CaptionBatch) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.precision):
            return self.image_members(batch.images).float(), self.text_embeddings(batch.texts).float()

    # -- the loss -----------------------------------------------------------------------------------
    def loss_from_embeddings(self, img: torch.Tensor, txt: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
        # one gather per ensemble member: gathering a transposed (B, K, D) view sends non-contiguous gradients
        # through gloo's all-to-all backward, which silently scrambles them (tests/test_distributed.py)
        img_all = torch.stack([self.gather(member.contiguous()) for member in img]) if _distributed() else img
        txt_all = self.gather(txt)
        positives = self.positives(gather_no_grad(owners))
        if self.kind == "pair":
            return self.pair_loss(img_all, txt_all, positives)
        logits = self.model.similarity(img_all, txt_all)                 # (K, N, N), one matmul for all heads
        if self.kind == "clip":
            loss = members_clip_loss(logits, positives)
            return loss * 2 if self.reduction == "sum" else loss
        return siglip_loss(logits, positives)                            # mean over heads and rows

    def pair_loss(self, img_all: torch.Tensor, txt_all: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        """The seed's objective: image i with caption i (+1) and with one random caption of another image (-1)."""
        n = txt_all.shape[0]
        wrong = 1.0 - positives
        if not bool((wrong.sum(1) > 0).all()):
            raise ValueError("the pair loss needs at least two different images in every batch")
        neg = torch.multinomial(wrong, 1).squeeze(1)                      # a wrong caption per image
        labels = torch.cat([torch.ones(n), -torch.ones(n)]).to(txt_all.device)
        a, b = torch.cat([img_all, img_all], 1), torch.cat([txt_all, txt_all[neg]])  # (K, 2N, D), (2N, D)
        scores = self.model.similarity.pair(a, b)                                   # (K, 2N): all heads at once
        return pair_loss(scores, labels.expand_as(scores), self.pair_variant)       # mean over heads and pairs

    def forward(self, batch: CaptionBatch) -> torch.Tensor:
        img, txt = self.embed(batch)
        return self.loss_from_embeddings(img, txt, batch.owners)

    def cached_gradient_step(self, batch: CaptionBatch, micro: int) -> torch.Tensor:
        """Loss of the whole batch with gradients accumulated ``micro`` items at a time (does its own backward)."""
        slices = [slice(s, s + micro) for s in range(0, len(batch), micro)]
        rng, imgs, txts = [], [], []
        with torch.no_grad():
            for s in slices:
                rng.append(torch.get_rng_state())  # same dropout/augmentation masks on the second pass
                i, t = self.embed(batch.slice(s))
                imgs.append(i)
                txts.append(t)
        img = torch.cat(imgs, 1).requires_grad_(True)
        txt = torch.cat(txts, 0).requires_grad_(True)
        loss = self.loss_from_embeddings(img, txt, batch.owners)
        loss.backward()
        for s, state in zip(slices, rng):
            torch.set_rng_state(state)
            i, t = self.embed(batch.slice(s))
            torch.autograd.backward([i, t], [img.grad[:, s], txt.grad[s]])
        return loss.detach()


ContrastiveObjective = CaptionObjective  # the name it had before the one Objective interface


def kornia_augment(size: int) -> nn.Module:
    """Light augmentation for small data, applied to the normalised batch (kornia: no torchvision needed)."""
    K = require("kornia.augmentation", "augment", "image augmentation (train.augment)")
    return nn.Sequential(K.RandomResizedCrop((size, size), scale=(0.7, 1.0), ratio=(0.85, 1.18)),
                         K.RandomHorizontalFlip(),
                         K.RandomAffine(degrees=10, p=0.5))
