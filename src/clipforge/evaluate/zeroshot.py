"""Zero-shot classification, decoupled from training (after open_clip's zero_shot_classifier.py).

A ``ZeroShotClassifier`` is built once from a model, class names and their descriptions (or templates)
and then scores any image embeddings. ``zero_shot_classifier(model, class_names, templates=None)`` is the one
way labels become a classifier: ``clipforge classify``, ``clipforge zeroshot``, the web service and library
users all call it, so the prompts (data/prompts.py: the language rule, the article rule) and the
probabilities are the same everywhere. With cosine similarity a
class is the re-normalised mean of its description embeddings (CLIP's template ensemble); with a
Siamese similarity a class score is the mean of its description scores.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.data.descriptions import ClassDescriptions, from_templates
from clipforge.model.heads import CosineSimilarity


class ZeroShotClassifier:
    def __init__(self, model, descriptions: ClassDescriptions, text_feats: np.ndarray | None = None,
                 vocab: list[str] | None = None):
        """``text_feats`` (tower features of ``vocab``) may be given to reuse cached embeddings."""
        self.model = model
        self.class_names = list(descriptions.class_names)
        self.vocab = vocab or descriptions.vocabulary()
        with torch.inference_mode():
            feats = torch.as_tensor(text_feats) if text_feats is not None else \
                torch.from_numpy(model.text_tower.encode(self.vocab))
            self.text_emb = model.embed_text_features(feats)                     # (V, D)
        self.membership = torch.from_numpy(descriptions.membership(self.vocab))  # (C, V)
        self.cosine = isinstance(model.similarity, CosineSimilarity)
        self.weights = F.normalize(self.membership @ self.text_emb, dim=-1) if self.cosine else None

    @torch.inference_mode()
    def scores(self, image_emb) -> np.ndarray:
        """(N, C) class scores: cosine similarities, or mean Siamese scores."""
        z = torch.as_tensor(image_emb)
        if self.cosine:
            return (z @ self.weights.T).numpy()
        s = self.model.similarity(z, self.text_emb)                                # (N, V)
        return (s @ self.membership.T / self.membership.sum(1)).numpy()

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Softmax over the last axis of class ``scores`` at the model's logit scale (10 for a Siamese score)."""
        # detached: the scale is a learnable parameter, and float() of a tensor that needs grad warns
        scale = float(self.model.similarity.scale.detach()) if self.cosine else 10.0
        return torch.softmax(torch.from_numpy(np.asarray(scores)) * scale, -1).numpy()

    def classify(self, image_emb, classes: list[int] | None = None, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) per image, restricted to ``classes`` if given."""
        s = self.scores(image_emb)
        cols = list(range(len(self.class_names))) if classes is None else list(classes)
        p = self.probabilities(s[:, cols])
        order = np.argsort(-p, 1)[:, :k]
        return [[(self.class_names[cols[j]], float(p[i, j])) for j in row] for i, row in enumerate(order)]


def zero_shot_classifier(model, class_names: list[str], templates: list[str] | None = None) -> ZeroShotClassifier:
    """open_clip's ``build_zero_shot_classifier`` for a clipforge model: every class name in every template
    (``templates=None``: the set of each name's language), embedded once, averaged and re-normalised per class;
    scoring is then one matmul. Names are kept as given (a caller that read ``_`` as a space did so already)."""
    return ZeroShotClassifier(model, from_templates(list(class_names), templates))


def topk_metrics(scores: np.ndarray, labels: np.ndarray, classes: list[int]) -> dict:
    """N-way among ``classes``: top-1, top-5 (when >= 5 classes) and mean per-class recall."""
    classes = list(classes)
    s = scores[:, classes]
    pos = {c: i for i, c in enumerate(classes)}
    y = np.array([pos[int(v)] for v in labels])
    order = np.argsort(-s, 1)
    pred = order[:, 0]
    out = {"top1": float((pred == y).mean()) if len(y) else float("nan"),
           "mean_per_class_recall": float(np.mean([(pred[y == i] == i).mean() for i in range(len(classes)) if (y == i).any()]))}
    if len(classes) >= 5:
        out["top5"] = float((order[:, :5] == y[:, None]).any(1).mean())
    out["confusion"] = [[int(((y == a) & (pred == b)).sum()) for b in range(len(classes))] for a in range(len(classes))]
    return out


def _per_class_acc(pred: np.ndarray, y: np.ndarray, classes: list[int]) -> float:
    return float(np.mean([(pred[y == c] == c).mean() for c in classes if (y == c).any()]))


def gzsl_metrics(scores: np.ndarray, labels: np.ndarray, seen: list[int], unseen: list[int], gamma: float = 0.0) -> dict:
    """Generalised ZSL over all classes with calibrated stacking (seen scores lowered by ``gamma``).

    Accuracies are per-class means (the GZSL convention), H their harmonic mean.
    """
    s = scores.copy()
    s[:, seen] -= gamma
    pred = s.argmax(1)
    m_seen, m_unseen = np.isin(labels, seen), np.isin(labels, unseen)
    acc_s = _per_class_acc(pred[m_seen], labels[m_seen], seen)
    acc_u = _per_class_acc(pred[m_unseen], labels[m_unseen], unseen)
    h = 2 * acc_s * acc_u / (acc_s + acc_u) if acc_s + acc_u > 0 else 0.0
    return {"gzsl_seen": acc_s, "gzsl_unseen": acc_u, "gzsl_h": float(h), "gzsl_gamma": float(gamma)}


# Calibration offsets tried: class scores are cosines or tanh pair scores, both within [-1, 1].
GAMMA_GRID = np.linspace(-1.0, 1.0, 401)


def gzsl_h_curve(scores: np.ndarray, labels: np.ndarray, seen: list[int], unseen: list[int],
                 grid: np.ndarray = GAMMA_GRID) -> np.ndarray:
    """H at every calibration offset of ``grid`` (only ever on a pseudo-unseen split of seen classes)."""
    return np.array([gzsl_metrics(scores, labels, seen, unseen, g)["gzsl_h"] for g in grid])


def evaluate_zeroshot(model, images, labels: np.ndarray, class_names: list[str], templates: list[str] | None = None,
                      image_emb: np.ndarray | None = None, batch_size: int = 64) -> dict:
    """CLIP_benchmark-style zero-shot classification: every class name x every template, embeddings averaged
    and re-normalised per class; acc1, acc5 and mean per-class recall over all classes.

    ``templates=None`` gives each class the prompts of its own language (data/prompts.py), so Chinese
    class names get Chinese prompts. ``image_emb`` may be passed to reuse image embeddings across languages."""
    zs = zero_shot_classifier(model, class_names, templates)
    emb = model.encode_image(images, batch_size) if image_emb is None else image_emb
    m = topk_metrics(zs.scores(emb), np.asarray(labels), list(range(len(class_names))))
    out = {"acc1": m["top1"], "mean_per_class_recall": m["mean_per_class_recall"], "n": int(len(labels)),
           "n_classes": len(class_names)}
    if "top5" in m:
        out["acc5"] = m["top5"]
    return out
