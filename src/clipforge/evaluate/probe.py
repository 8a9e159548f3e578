"""Linear probe on frozen image features: the supervised ceiling to report beside zero-shot numbers."""
from __future__ import annotations

import numpy as np


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 classes: list[int], C: float = 0.1) -> float:
    """Top-1 of a logistic regression trained and tested on ``classes`` only (N-way among them)."""
    mtr, mte = np.isin(train_y, classes), np.isin(test_y, classes)
    if not mte.any():
        return float("nan")
    present = np.unique(train_y[mtr])
    if len(present) < 2:  # one class (e.g. a single unseen class): nothing to fit, predict it (sklearn would raise)
        return float((test_y[mte] == present[0]).mean()) if len(present) else float("nan")
    from sklearn.linear_model import LogisticRegression  # imported here: sklearn costs ~1 s at every CLI start
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=500))
    clf.fit(train_x[mtr], train_y[mtr])
    return float((clf.predict(test_x[mte]) == test_y[mte]).mean())
