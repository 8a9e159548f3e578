"""Transductive zero-shot: use the UNLABELLED test images of the unseen classes as well as the text prototypes.

A separate, clearly labelled setting (never mixed into inductive numbers): it assumes the whole unlabelled
test set is available at once. The linear-probe ceiling shows the unseen classes form clean clusters in the
image tower's feature space; the inductive zero-shot scores only have to say which cluster is which class.

Method (cluster, then match):
  1. k-means with one cluster per candidate class on the L2-normalised tower features (cosine geometry,
     many restarts); the clusters never see the text side, so a class the zero-shot head confuses with
     another (everything called "Shirt") still gets its own cluster;
  2. a cluster x class table of zero-shot probability mass, each column divided by the class's total mass,
     so a "hub" class that takes a large share of every cluster does not win them all;
  3. a one-to-one matching of clusters to classes that maximises that table (Hungarian algorithm).
Each image takes its cluster's class. Unlike label-propagating from the scores, a systematic zero-shot
bias between two classes cannot merge them: the matching is one-to-one.
"""
from __future__ import annotations

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def _softmax(scores: np.ndarray, scale: float) -> np.ndarray:
    z = (scores - scores.max(1, keepdims=True)) * scale
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def cluster_and_match(features: np.ndarray, scores: np.ndarray, scale: float = 100.0, n_init: int = 20,
                      seed: int = 0) -> np.ndarray:
    """Transductive labels (indices into the score columns) for ``features`` (N, D) with zero-shot ``scores`` (N, C).

    ``scale`` turns scores into probabilities (the model's logit scale for cosine scores)."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans

    n_classes = scores.shape[1]
    if len(features) < n_classes:
        return scores.argmax(1)
    clusters = KMeans(n_classes, n_init=n_init, random_state=seed).fit_predict(_normalise(features.astype(np.float64)))
    p = _softmax(scores.astype(np.float64), scale)
    mass = np.stack([p[clusters == k].sum(0) for k in range(n_classes)])          # (cluster, class)
    share = mass / mass.sum(0, keepdims=True).clip(1e-12)
    rows, cols = linear_sum_assignment(-share)
    to_class = np.empty(n_classes, dtype=int)
    to_class[rows] = cols
    return to_class[clusters]
