"""The open_clip-style face: ``create_model_and_transforms`` and ``get_tokenizer``.

Why: code written for open_clip (CLIP_benchmark, open_clip's ``build_zero_shot_classifier``, retrieval and
training loops) asks a model for three things: a preprocess that turns one PIL image into a tensor, a tokenizer
that turns a list of strings into something with ``.to(device)``, and ``model.encode_image`` /
``model.encode_text`` / ``model(image, text)`` on those. This module makes the first two from a saved clipforge
model (or from two tower ids); ``DualEncoder`` answers the third. No adapter class sits in between, so a
clipforge model in an open_clip loop is the very model the CLI, the service and the index use.

Both come from the towers' own ``prepare``: the preprocess is exactly clipforge's (same resize, scale,
normalisation, inversion), and the tokens are exactly what the friendly ``encode_text(strings)`` feeds its
tower, so the tensor face and the friendly face give the same vectors.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageOps

from clipforge.config import HeadConfig
from clipforge.data.images import to_rgb
from clipforge.errors import ClipforgeError
from clipforge.model.dual_encoder import CONFIG, WEIGHTS, DualEncoder, TextTokens
from clipforge.towers import Tower, build_tower


class ImageTransform:
    """One PIL image of any mode -> a ``(C, H, W)`` float tensor, as the model's image tower prepares it.

    The image is decoded the way clipforge decodes files (``data.images``): EXIF orientation applied, alpha
    composited on white, 16-bit and palette modes converted, so a transparent PNG gives the same tensor here
    as when clipforge reads it from disk. ``train`` only names the transform: clipforge's train and eval
    transforms are the same (its heads train on cached features of un-augmented images, and an augmented
    preprocess would make CLIP_benchmark-style numbers depend on a random draw)."""

    def __init__(self, prepare: Callable, train: bool = False):
        self.prepare, self.train = prepare, train

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise TypeError(f"a clipforge preprocess takes one PIL image, not a {type(image).__name__}")
        return self.prepare([to_rgb(ImageOps.exif_transpose(image))])[0].contiguous()

    def __repr__(self) -> str:
        return f"ImageTransform(train={self.train}, prepare={self.prepare!r})"


class Tokenizer:
    """A list of strings (or one string) -> ``TextTokens`` for ``model.encode_text``: the text tower's own
    tokens (a dict of tensors), or the strings themselves for frozen numpy/C towers, which tokenise inside."""

    def __init__(self, tower: Tower):
        self.tower = tower

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> TextTokens:
        """``context_length`` is accepted for open_clip compatibility and ignored: each tower has its own."""
        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        return TextTokens(self.tower.prepare(texts))

    def __repr__(self) -> str:
        return f"Tokenizer({self.tower.tower_id})"


def _saved_config(directory: str | Path) -> dict:
    d = Path(directory)
    if not (d / CONFIG).is_file() or not (d / WEIGHTS).is_file():
        raise ClipforgeError(f"'{d}' is not a saved clipforge model (needs {CONFIG} and {WEIGHTS})")
    return json.loads((d / CONFIG).read_text())


def _check_source(pretrained, image_tower: str | None, text_tower: str | None) -> None:
    if pretrained is not None and (image_tower or text_tower):
        raise ClipforgeError("give either pretrained=<saved model dir> or image_tower= and text_tower=, not both")
    if pretrained is None and not (image_tower and text_tower):
        raise ClipforgeError("give pretrained=<saved model dir>, or both image_tower= and text_tower= "
                             "(e.g. pkg:efficientnet-lite0 and pkg:all-MiniLM-L6-v2)")


def create_model_and_transforms(pretrained: str | Path | None = None, *, image_tower: str | None = None,
                                text_tower: str | None = None, image_size: int | None = None, invert: bool = False,
                                head: HeadConfig | dict | None = None, device: str | torch.device = "cpu",
                                ) -> tuple[DualEncoder, ImageTransform, ImageTransform]:
    """``(model, preprocess_train, preprocess_val)`` as open_clip's function of the same name.

    ``pretrained`` is a directory written by ``DualEncoder.save_pretrained`` (what ``clipforge align`` and
    ``clipforge caption`` save). Or name two towers (``image_tower="pkg:efficientnet-lite0",
    text_tower="pkg:all-MiniLM-L6-v2"``) for a model whose head is untrained (random, ``head`` settings or
    the ``HeadConfig`` defaults): a starting point to train, not a model to evaluate. ``image_size`` and
    ``invert`` apply to tower ids only (a saved model keeps its own). Towers come locked and the model in
    eval mode, on ``device``. The two preprocesses are equal (see ``ImageTransform``)."""
    _check_source(pretrained, image_tower, text_tower)
    if pretrained is not None:
        model = DualEncoder.from_pretrained(pretrained)
    else:
        cfg = head if isinstance(head, HeadConfig) else HeadConfig(**(head or {}))
        image = build_tower(image_tower, "image", image_size=image_size, invert=invert).lock()
        text = build_tower(text_tower, "text").lock()
        model = DualEncoder(image, text, cfg, tower_opts={"image_size": image_size, "invert": invert})
    model = model.to(device).eval()
    prepare = model.image_tower.prepare
    return model, ImageTransform(prepare, train=True), ImageTransform(prepare, train=False)


def get_tokenizer(pretrained: str | Path | None = None, *, text_tower: str | None = None,
                  model: DualEncoder | None = None) -> Tokenizer:
    """The tokenizer of a saved model's text tower (``pretrained``), of a tower id (``text_tower``), or of a
    model already loaded (``model``: shares its tower instead of building a second copy of it)."""
    if sum(x is not None for x in (pretrained, text_tower, model)) != 1:
        raise ClipforgeError("give one of pretrained=<saved model dir>, text_tower=<tower id> or model=<DualEncoder>")
    if model is not None:
        return Tokenizer(model.text_tower)
    if text_tower is not None:
        return Tokenizer(build_tower(text_tower, "text"))
    cfg = _saved_config(pretrained)
    # Tokenising needs the tower's id and, for from-scratch towers, its saved config (the vocabulary), not weights.
    return Tokenizer(build_tower(cfg["text_tower"], "text", config=cfg.get("tower_configs", {}).get("text")))
