"""Resolve ``data.source`` to train/test class datasets (and unseen classes when the layout fixes them)."""
from __future__ import annotations

import numpy as np

from clipforge.errors import ConfigError
from clipforge.data.dataset import ClassDataset


def _holdout(ds: ClassDataset, frac: float, seed: int) -> tuple[ClassDataset, ClassDataset]:
    """Per-class train/test split of a folder dataset that has no split of its own."""
    rng = np.random.RandomState(seed)
    tr, te = [], []
    for c in range(len(ds.class_names)):
        idx = rng.permutation(np.flatnonzero(ds.labels == c))
        k = int(round(len(idx) * frac))
        te += list(idx[:k])
        tr += list(idx[k:])
    return ds.subset(sorted(tr)), ds.subset(sorted(te))


def load_class_source(source: str, seed: int = 0, test_frac: float = 0.3):
    """-> (train, test, fixed_unseen or None). Sources: fashion-mnist, folder:<dir>, awa2:<dir>."""
    scheme, _, arg = source.partition(":")
    if source == "fashion-mnist":
        from clipforge.data.fashion_mnist import load_fashion_mnist
        return load_fashion_mnist("train"), load_fashion_mnist("test"), None
    if scheme == "folder" and arg:
        from clipforge.data.folders import load_image_folder
        tr, te = _holdout(load_image_folder(arg), test_frac, seed)
        return tr, te, None
    if scheme == "awa2" and arg:
        from clipforge.data.folders import load_awa2
        ds, unseen = load_awa2(arg)
        tr, te = _holdout(ds, test_frac, seed)
        return tr, te, unseen
    raise ConfigError(f"config field 'data.source': unknown source '{source}'; use 'fashion-mnist', "
                      "'folder:<dir with one sub-folder per class>' or 'awa2:<AwA2 root>'")
