"""Hugging Face image towers (``hf:<hub id or local dir>``) through transformers AutoModel.

Preprocessing comes from the model's own image-processor config when it has one (size, mean, std),
so a ViT or ConvNeXt is fed the way it was trained.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from clipforge.errors import ClipforgeError
from clipforge.towers.base import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess, Tower
from clipforge.towers.loading import local_load


def _processor_settings(path: str) -> dict:
    f = Path(path) / "preprocessor_config.json"
    if not f.is_file():
        return {}
    cfg = json.loads(f.read_text())
    size = cfg.get("size", {})
    size = size.get("shortest_edge") or size.get("height") if isinstance(size, dict) else size
    return {k: v for k, v in {"size": size, "mean": cfg.get("image_mean"), "std": cfg.get("image_std")}.items() if v}


class HFImageTower(Tower):
    modality = "image"

    def __init__(self, name_or_path: str, image_size: int | None = None, invert: bool = False):
        super().__init__()
        from transformers import AutoConfig, AutoModel
        local_load(name_or_path)
        if os.path.isdir(name_or_path):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            self.model = AutoModel.from_pretrained(name_or_path)
            cfg = AutoConfig.from_pretrained(name_or_path)
        except (OSError, ValueError) as e:
            raise ClipforgeError(f"cannot load image model '{name_or_path}': {e}".splitlines()[0]) from None
        s = _processor_settings(name_or_path) if os.path.isdir(name_or_path) else {}
        size = image_size or s.get("size") or getattr(cfg, "image_size", 224)
        self.pre = ImagePreprocess(size=int(size), mean=tuple(s.get("mean", IMAGENET_MEAN)),
                                   std=tuple(s.get("std", IMAGENET_STD)), invert=invert)
        self.tower_id = f"hf:{name_or_path}"
        self.dim = int(getattr(cfg, "hidden_size", 0) or cfg.hidden_sizes[-1])

    def prepare(self, items):
        return self.pre(items).contiguous()

    def preprocess_key(self) -> dict:
        return self.pre.key()

    def blocks(self):
        # Older transformers keep the layers under model.encoder (ViT: encoder.layer, ConvNeXt:
        # encoder.stages); newer ones put them on the model itself (ViT: model.layers). Without the
        # second place, unlock(n) on a ViT fell back to [model] and unlocked every parameter.
        for owner in (getattr(self.model, "encoder", None), self.model):
            for name in ("layer", "layers", "stages"):
                blocks = getattr(owner, name, None) if owner is not None else None
                if isinstance(blocks, (torch.nn.ModuleList, torch.nn.Sequential)) and len(blocks):
                    return list(blocks)
        return [self.model]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        h = out.last_hidden_state
        return h.mean(1) if h.dim() == 3 else h.mean((2, 3))
