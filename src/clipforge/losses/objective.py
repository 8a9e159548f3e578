"""The one training-step interface: every recipe's loss is an ``Objective``.

An objective owns what each recipe used to write for itself, so it is written once:

* batching: ``batches(epoch)`` yields the epoch's batches from ONE shuffling rule (``shuffled_indices``), this
  rank's share of each global batch under torchrun;
* positives: ``positives(a, b)`` marks pairs with the same owner (image id or class), so two captions of one
  image, or two images of one class, are never each other's negatives;
* gathering: ``gather(x)`` concatenates every rank's features with gradients (negatives of the global batch);
* the two sides: ``image_members`` / ``text_embeddings`` take cached features (a locked tower: LiT), a frozen
  trunk's activations (only the tower's last blocks train), or raw inputs through the whole tower, so every
  objective runs with locked or unlocked towers.

A subclass says what a batch is (``batch(idx)``: by default the index tensor itself) and what its loss is
(``forward(batch)``). The Trainer runs ``objective(batch)`` for every batch of ``objective.batches(epoch)``.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from clipforge.losses.functional import gather_with_grad
from clipforge.train.distributed import World


def autocast(precision: str, device: str = "cpu"):
    """bf16 autocast on CPU, fp16/bf16 AMP on CUDA, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)


def shuffled_indices(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = False) -> list[torch.Tensor]:
    """The epoch's index batches: one full batch (in order) when ``batch_size`` covers ``n``, else a permutation
    seeded by (seed, epoch) cut into batches; ``drop_last`` keeps every batch the same size (needed under DDP)."""
    if not batch_size or batch_size >= n:
        return [torch.arange(n)]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    stop = n - n % batch_size if drop_last else n
    return [perm[i:i + batch_size] for i in range(0, stop, batch_size)]


class Objective(nn.Module):
    """Base class. ``model`` is a DualEncoder (or, for distillation, the student tower); ``n`` the number of
    training items (0 when batches come from elsewhere), ``batch_size`` 0 = full batch.

    ``image_cached``: image inputs are tower features; else ``image_trunk_blocks > 0`` means they are the tower's
    ``trunk`` activations and only its last blocks run; else they are raw images, prepared and (optionally)
    augmented every step."""
    drop_last = False

    def __init__(self, model: nn.Module, n: int = 0, batch_size: int = 0, seed: int = 0, world: World | None = None,
                 image_cached: bool = True, text_cached: bool = True, image_trunk_blocks: int = 0,
                 augment: nn.Module | None = None):
        super().__init__()
        self.model, self.n, self.seed, self.world = model, n, seed, world or World()
        bs = n if not batch_size else min(batch_size, n)
        self.batch_size = bs - bs % self.world.size if self.world.size > 1 else bs
        self.image_cached, self.text_cached = image_cached, text_cached
        self.image_trunk_blocks, self.augment = image_trunk_blocks, augment

    # -- batching ---------------------------------------------------------------------------------
    @property
    def _drop_last(self) -> bool:
        """Under torchrun every batch must split evenly over the ranks, so a short last batch is dropped."""
        return self.drop_last or self.world.size > 1

    @property
    def steps_per_epoch(self) -> int:
        if not self.batch_size or self.batch_size >= self.n:
            return 1
        return self.n // self.batch_size if self._drop_last else -(-self.n // self.batch_size)

    def batches(self, epoch: int):
        for idx in shuffled_indices(self.n, self.batch_size, self.seed, epoch, self._drop_last):
            yield self.batch(self.world.shard(idx) if self.world.size > 1 else idx)

    def batch(self, idx: torch.Tensor):
        return idx

    # -- positives and gathering ------------------------------------------------------------------
    @staticmethod
    def positives(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """(len(a), len(b)) 0/1: item i of ``a`` and item j of ``b`` share an owner (image id or class)."""
        b = a if b is None else b
        return (a[:, None] == b[None, :]).float()

    @staticmethod
    def gather(x: torch.Tensor) -> torch.Tensor:
        return gather_with_grad(x)

    # -- the two sides ----------------------------------------------------------------------------
    def image_features(self, images) -> torch.Tensor:
        """Tower features of a batch's image inputs (cached features, trunk activations or raw images)."""
        tower = self.model.image_tower
        if self.image_cached:
            return torch.as_tensor(images).float()
        if self.image_trunk_blocks:
            return tower.from_trunk(torch.as_tensor(images).float(), self.image_trunk_blocks).float()
        x = tower.prepare(images)
        if self.augment is not None and self.training:
            x = self.augment(x)
        return tower(x).float()

    def image_members(self, images) -> torch.Tensor:
        """(K, B, D): each ensemble member's normalised image embedding."""
        return self.model.image_head.members_forward(self.image_features(images))

    def text_embeddings(self, texts) -> torch.Tensor:
        """(B, D) normalised text embeddings from cached features or strings through the text tower."""
        m = self.model
        feats = torch.as_tensor(texts) if self.text_cached else m.text_tower(m.text_tower.prepare(texts))
        return m.embed_text_features(feats.float(), with_bridge=False)

    def forward(self, batch) -> torch.Tensor:
        raise NotImplementedError
