"""Transductive zero-shot: use the UNLABELLED test images of the unseen classes as well as the text prototypes.

A separate, clearly labelled setting (never mixed into inductive numbers): it assumes the whole unlabelled
test set is available at once. The linear-probe ceiling shows the unseen classes form clean clusters in the
image tower's feature space; the inductive zero-shot scores say which cluster is which class.

Method (prototype rectification, an EM / k-means on the unlabelled images):
  1. standardise the tower features of the test images and reduce them with PCA;
  2. start one centroid per class at the mean of the images weighted by their zero-shot softmax;
  3. alternate: assign each image to its nearest centroid, re-estimate the centroids (k-means);
  4. the cluster a centroid ends in keeps the class it started from (step 2 fixes the matching).
"""
from __future__ import annotations

import numpy as np


def rectify(features: np.ndarray, scores: np.ndarray, iters: int = 30, pca_dim: int = 64,
            temperature: float = 0.02) -> np.ndarray:
    """Transductive labels (indices into the score columns) for ``features`` (N, D) with zero-shot ``scores`` (N, C)."""
    x = (features - features.mean(0)) / features.std(0).clip(1e-6)
    u, s, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)
    z = u[:, :pca_dim] * s[:pca_dim]
    z = z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)
    logits = (scores - scores.max(1, keepdims=True)) / temperature
    w = np.exp(logits)
    w /= w.sum(1, keepdims=True)
    centroids = (w.T @ z) / w.sum(0)[:, None].clip(1e-12)
    labels = None
    for _ in range(iters):
        new = np.argmax(z @ centroids.T - 0.5 * (centroids ** 2).sum(1), axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for c in range(centroids.shape[0]):
            if np.any(labels == c):
                centroids[c] = z[labels == c].mean(0)
    return labels
