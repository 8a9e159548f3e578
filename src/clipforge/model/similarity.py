"""Similarities between images and texts with a DualEncoder: the one code path behind the library, the CLI
(``clipforge similarity``) and the web service (``POST /api/similarity``).

Images and texts live in one embedding space, so three kinds of pair make sense:

* image-text: the model's own score. With cosine similarity that is the cosine of the two embeddings (and the
  ``logit`` the model trained with, cos / T + bias); with a Siamese similarity it is the network's score.
* text-text and image-image: cosine of the two embeddings in the shared space (after the heads).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
import torch

from clipforge.model.heads import CosineSimilarity
from clipforge.index.core import as_image


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Image:
    image: object  # PIL image, path or bytes


def _item(x):
    """str -> Text; PIL image / Path / bytes -> Image; Text and Image pass through."""
    if isinstance(x, (Text, Image)):
        return x
    if isinstance(x, str):
        return Text(x)
    if isinstance(x, (Path, bytes, bytearray, PILImage.Image)):
        return Image(x)
    raise TypeError(f"cannot compare a {type(x).__name__}: pass a string, a PIL image, a Path or bytes")


class Similarity:
    """Pairwise scores with one model. ``pair(a, b)`` for two items; the ``*_matrix`` methods for many."""

    def __init__(self, model):
        self.model = model
        self.cosine = isinstance(model.similarity, CosineSimilarity)

    def embed(self, items) -> np.ndarray:
        items = [_item(x) for x in items]
        out = np.zeros((len(items), 0), np.float32)
        texts = [i for i, x in enumerate(items) if isinstance(x, Text)]
        images = [i for i, x in enumerate(items) if isinstance(x, Image)]
        parts = {}
        if texts:
            for i, v in zip(texts, self.model.encode_text([items[i].text for i in texts])):
                parts[i] = v
        if images:
            for i, v in zip(images, self.model.encode_image([as_image(items[i].image) for i in images])):
                parts[i] = v
        if parts:
            out = np.stack([parts[i] for i in range(len(items))]).astype(np.float32)
        return out

    def image_text_matrix(self, images, texts) -> np.ndarray:
        """(N images, M texts) model scores (cosines for a cosine model)."""
        a, b = self.embed([Image(i) for i in images]), self.embed([Text(t) for t in texts])
        return a @ b.T if self.cosine else self.model.similarity_matrix(a, b)

    def text_text_matrix(self, texts_a, texts_b) -> np.ndarray:
        return self.embed([Text(t) for t in texts_a]) @ self.embed([Text(t) for t in texts_b]).T

    def image_image_matrix(self, images_a, images_b) -> np.ndarray:
        return self.embed([Image(i) for i in images_a]) @ self.embed([Image(i) for i in images_b]).T

    def pair(self, a, b) -> dict:
        """{'pair': 'image-text' | 'text-text' | 'image-image', 'score': float, ...} for two items.

        ``score`` is the cosine for a cosine model (also given as ``cosine``), and image-text pairs add the
        model's ``logit``; with a Siamese model an image-text ``score`` is the network's output in [-1, 1].
        """
        return self.all_pairs([a, b])[0]

    def all_pairs(self, items) -> list[dict]:
        """Every pair (i < j) of ``items`` in order, each with its indices ``a``, ``b``; items embedded once."""
        items = [_item(x) for x in items]
        vecs = self.embed(items)
        out = []
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                out.append({"a": i, "b": j, **self._score(items[i], items[j], vecs[i], vecs[j])})
        return out

    def _score(self, a, b, va, vb) -> dict:
        kinds = ["image" if isinstance(x, Image) else "text" for x in (a, b)]
        if kinds == ["text", "image"]:  # always reported as image-text
            kinds, va, vb = ["image", "text"], vb, va
        out = {"pair": "-".join(kinds)}
        cos = float(np.dot(va, vb))
        if kinds != ["image", "text"]:
            return {**out, "score": cos, "cosine": cos}
        with torch.inference_mode():
            logit = float(self.model.logits(torch.from_numpy(va[None]), torch.from_numpy(vb[None]))[0, 0])
        return {**out, "score": cos, "cosine": cos, "logit": logit} if self.cosine else {**out, "score": logit}
