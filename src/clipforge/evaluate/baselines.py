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
* ``csa`` (Li, Chinchali & Topcu, ICLR 2025, canonical similarity analysis): CCA of the centred image features
  against the centred text features, then a weighted cosine over the first ``dims`` canonical components, each
  component weighted by its canonical correlation, so directions the two spaces barely share count little.
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


def _whitening(x: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centred ``x`` -> (U S, V, g) with x = U S V^T and g = (s^2/n + lam)^(-1/2): the regularised whitening
    (C + lam I)^(-1/2) restricted to x's span, from one thin SVD of the data (no d x d eigendecomposition, which
    costs seconds at 1280 features). lam = ``ridge`` x the mean variance, so the ridge is relative to the features'
    own scale: with fewer pairs than features (Tux Paint: ~630 pairs, 1280 image features) plain CCA finds
    correlations of 1 in noise."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    ev = s ** 2 / len(x)
    lam = ridge * max(float(ev.sum()) / x.shape[1], 1e-12)
    return u * s, vt.T, 1.0 / np.sqrt(ev + lam)


@dataclass
class CSA(FeatureMethod):
    """Canonical similarity analysis: regularised CCA in closed form (whiten both sides, SVD of the whitened
    cross-covariance), keep the top ``dims`` canonical pairs, and score ``sum_i rho_i x_i y_i`` over the unit-
    normalised canonical vectors (the paper's weighted cosine). The weights rho_i are the Pearson correlations of
    each canonical pair on the training pairs; they go on the image side only, so a class stays the re-normalised
    mean of unit text vectors (``class_weights``) and rankings are those of the weighted cosine."""
    dims: int = 64
    ridge: float = 0.1
    weighted: bool = True
    name: str = "csa"
    mu_x: np.ndarray | None = field(default=None, repr=False)
    mu_y: np.ndarray | None = field(default=None, repr=False)
    a: np.ndarray | None = field(default=None, repr=False)
    b: np.ndarray | None = field(default=None, repr=False)
    corr: np.ndarray | None = field(default=None, repr=False)

    def fit(self, img: np.ndarray, txt: np.ndarray) -> "CSA":
        x, y = np.asarray(img, np.float64), _norm(txt).astype(np.float64)
        self.mu_x, self.mu_y = x.mean(0), y.mean(0)
        x, y = x - self.mu_x, y - self.mu_y
        (usx, vx, gx), (usy, vy, gy) = _whitening(x, self.ridge), _whitening(y, self.ridge)
        # whitened cross-covariance Wx Cxy Wy = vx K vy^T with K small (ranks of x and y): its SVD is CCA's
        p, _, qt = np.linalg.svd((usx * gx).T @ (usy * gy) / len(x), full_matrices=False)
        k = min(self.dims, x.shape[1], y.shape[1], p.shape[1])
        self.a, self.b = vx @ (gx[:, None] * p[:, :k]), vy @ (gy[:, None] * qt[:k].T)
        zx, zy = x @ self.a, y @ self.b
        den = np.sqrt((zx ** 2).sum(0) * (zy ** 2).sum(0))
        self.corr = np.where(den > 0, (zx * zy).sum(0) / np.where(den > 0, den, 1.0), 0.0).clip(0.0, 1.0)
        return self

    def image_embed(self, img: np.ndarray) -> np.ndarray:
        z = _norm((np.asarray(img, np.float64) - self.mu_x) @ self.a)
        return (z * self.corr if self.weighted else z).astype(np.float32)

    def text_embed(self, txt: np.ndarray) -> np.ndarray:
        return _norm((_norm(txt).astype(np.float64) - self.mu_y) @ self.b)


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
    if name == "csa":
        return CSA(dims=kw.get("dims", 64), ridge=kw.get("ridge", 0.1))
    if name == "conse":
        return ConSE(kw["classifier"], kw["class_text"], kw.get("temperature", 1.0))
    raise ValueError(f"unknown baseline {name!r}")


BASELINES = ("conse", "procrustes", "least-squares", "asif", "csa")
