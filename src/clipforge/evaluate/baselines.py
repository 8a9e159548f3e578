"""The obvious alternatives, as closed-form maps on the same cached features (issue 8's leaderboard).

Every method turns image tower features and text tower features into two embeddings compared by a dot
product, so the zero-shot classifier (class = re-normalised mean of its sentence embeddings) and retrieval
treat them exactly like a trained clipforge model:

* ``conse`` (Norouzi et al. 2014), training-free: the image tower's ImageNet probabilities weight the text
  embeddings of the 1000 ImageNet class names (the same bridge clipforge blends in).
* ``procrustes``: centre + PCA the image features to the text width, then the orthogonal map that best sends
  them onto their texts (SVD of X^T Y). ``least-squares``: ridge regression image -> text instead.
* ``asif`` (Norelli et al. 2023), training-free relative representations: an item is described by its
  similarities to N anchor pairs (image side against anchor images, text side against anchor texts), keep the
  top k, raise to power p, normalise; two modalities meet in "anchor space".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


def _norm(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)).astype(np.float32)


class FeatureMethod:
    """fit(image features, text features of the paired texts) -> embed both sides into one space."""
    name = "base"

    def fit(self, img: np.ndarray, txt: np.ndarray) -> "FeatureMethod":
        return self

    def image_embed(self, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def text_embed(self, txt: np.ndarray) -> np.ndarray:
        return _norm(txt)


@dataclass
class ConSE(FeatureMethod):
    classifier: object                 # features (torch) -> ImageNet logits, e.g. EfficientNetLiteTower.imagenet_logits
    class_text: np.ndarray             # (1000, D) text features of the ImageNet class names
    temperature: float = 1.0
    name: str = "conse"

    def image_embed(self, img: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            p = torch.softmax(self.classifier(torch.from_numpy(img)).float() / self.temperature, -1).numpy()
        return _norm(p @ _norm(self.class_text))


@dataclass
class LinearMap(FeatureMethod):
    orthogonal: bool = True
    ridge: float = 1.0
    name: str = "procrustes"
    mu: np.ndarray | None = field(default=None, repr=False)
    sd: np.ndarray | None = field(default=None, repr=False)
    pca: np.ndarray | None = field(default=None, repr=False)
    w: np.ndarray | None = field(default=None, repr=False)
    ty: np.ndarray | None = field(default=None, repr=False)

    def _x(self, img: np.ndarray) -> np.ndarray:
        x = (img - self.mu) / self.sd
        return x @ self.pca if self.pca is not None else x

    def fit(self, img: np.ndarray, txt: np.ndarray) -> "LinearMap":
        self.mu, sd = img.mean(0), img.std(0)
        self.sd = np.where(sd > 1e-6 * max(sd.max(), 1e-12), sd, np.inf)
        y = _norm(txt)
        self.ty = y.mean(0)
        y = y - self.ty
        if self.orthogonal:
            x0 = (img - self.mu) / self.sd
            d = min(y.shape[1], x0.shape[0], x0.shape[1])
            _, _, vt = np.linalg.svd(x0, full_matrices=False)
            self.pca = vt[:d].T                                       # (Di, d)
            x = x0 @ self.pca
            u, _, vt2 = np.linalg.svd(x.T @ y[:, :], full_matrices=False)  # (d, Dt)
            self.w = u @ vt2
        else:
            self.pca = None
            x = self._x(img)
            self.w = np.linalg.solve(x.T @ x + self.ridge * len(x) * np.eye(x.shape[1]), x.T @ y)
        return self

    def image_embed(self, img: np.ndarray) -> np.ndarray:
        return _norm(self._x(img) @ self.w)

    def text_embed(self, txt: np.ndarray) -> np.ndarray:
        return _norm(_norm(txt) - self.ty)


@dataclass
class ASIF(FeatureMethod):
    k: int = 64
    p: float = 8.0
    name: str = "asif"
    anchors_img: np.ndarray | None = field(default=None, repr=False)
    anchors_txt: np.ndarray | None = field(default=None, repr=False)

    def fit(self, img: np.ndarray, txt: np.ndarray) -> "ASIF":
        self.anchors_img, self.anchors_txt = _norm(img - img.mean(0)), _norm(txt)
        self.img_mean = img.mean(0)
        return self

    def _relative(self, x: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        s = torch.from_numpy(x @ anchors.T)
        k = min(self.k, s.shape[1])
        v, i = s.topk(k, dim=1)
        rel = torch.zeros_like(s).scatter_(1, i, v.clamp_min(0) ** self.p)
        return F.normalize(rel, dim=-1).numpy()

    def image_embed(self, img: np.ndarray) -> np.ndarray:
        return self._relative(_norm(img - self.img_mean), self.anchors_img)

    def text_embed(self, txt: np.ndarray) -> np.ndarray:
        return self._relative(_norm(txt), self.anchors_txt)


def class_weights(method: FeatureMethod, vocab_feats: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """(C, D) class embeddings: the re-normalised mean of each class's sentence embeddings (template ensemble)."""
    return _norm(membership @ method.text_embed(vocab_feats))


def make(name: str, **kw) -> FeatureMethod:
    if name == "procrustes":
        return LinearMap(orthogonal=True, name="procrustes")
    if name == "least-squares":
        return LinearMap(orthogonal=False, ridge=kw.get("ridge", 1.0), name="least-squares")
    if name == "asif":
        return ASIF(k=kw.get("k", 64), p=kw.get("p", 8.0))
    if name == "conse":
        return ConSE(kw["classifier"], kw["class_text"], kw.get("temperature", 1.0))
    raise ValueError(f"unknown baseline {name!r}")


BASELINES = ("conse", "procrustes", "least-squares", "asif")
