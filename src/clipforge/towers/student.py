"""A distilled student text tower: a frozen multilingual base tower under a learned projection onto a teacher's
text space (``distill:<base id>``). It lives with the other towers so that building any tower never imports
the distillation pipeline."""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.errors import ClipforgeError
from clipforge.model.heads import Projection
from clipforge.towers.base import Tower

SCHEME = "distill:"


class StudentTextTower(Tower):
    """Frozen base text tower -> trainable projection -> L2 normalisation (the teacher tower's output space)."""
    modality = "text"
    weights_from_id = False  # the projection is learned: always saved with the model
    is_student = True

    def __init__(self, base: Tower, out_dim: int, kind: str = "mlp", hidden: int = 1024, dropout: float = 0.1):
        super().__init__()
        if base.modality != "text":
            raise ClipforgeError(f"a student text tower needs a text base tower, not {base.tower_id}")
        self.base = base
        self.kind, self.hidden, self.dropout = kind, hidden, dropout
        self.head = Projection(base.dim, out_dim, kind, hidden, dropout)
        self.dim = int(out_dim)
        self.tower_id = SCHEME + base.tower_id
        # texts -> base features through an embedding cache; set by the distill pipeline, never saved
        self.cached_base = None

    def tower_config(self) -> dict:
        return {"base": self.base.tower_id, "dim": self.dim, "kind": self.kind, "hidden": self.hidden,
                "dropout": self.dropout}

    def prepare(self, items):
        return list(items)

    def base_features(self, texts: list[str]) -> torch.Tensor:
        """Base tower features; through ``cached_base`` (texts -> array, e.g. an embedding cache) when set."""
        if self.cached_base is not None:
            return torch.from_numpy(self.cached_base(list(texts)))
        return torch.from_numpy(self.base.encode(list(texts)))

    @torch.inference_mode()
    def encode(self, items, batch_size: int = 64) -> np.ndarray:
        was_training = self.training
        self.eval()
        out = self.project(self.base_features(list(items))).numpy() if len(items) else np.zeros((0, self.dim), np.float32)
        self.train(was_training)
        return out.astype(np.float32)

    def project(self, base_feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(base_feats.float()), dim=-1)

    def forward(self, texts) -> torch.Tensor:
        return self.project(self.base_features(texts))

    def blocks(self):
        return [self.head]

    def preprocess_key(self) -> dict:
        """The learned weights are part of the key: two students with one id must never share cached features."""
        h = hashlib.sha256()
        for k, v in sorted(self.head.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().contiguous().numpy().tobytes())
        return {"base": self.base.fingerprint(), "config": self.tower_config(), "weights": h.hexdigest()[:16]}

    def unlock(self, last_n: int | None = None) -> "Tower":
        """Only the projection trains; the base tower (numpy/C or locked) never does."""
        self.lock()
        for p in self.head.parameters():
            p.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> "StudentTextTower":
        super().train(mode)
        self.base.train(False)
        return self


