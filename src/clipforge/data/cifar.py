"""CIFAR-10 / CIFAR-100 in the standard python-pickle format, for zero-shot evaluation as CLIP_benchmark runs it.

The folder is the unpacked ``cifar-10-batches-py`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
``batches.meta`` with ``label_names``) or ``cifar-100-python`` (``train``, ``test``, ``meta`` with
``fine_label_names``). Each batch is a pickled dict with bytes keys: ``b'data'`` (N x 3072 uint8, the
1024 red then 1024 green then 1024 blue values of each 32x32 image, row-major) and ``b'labels'`` (CIFAR-10)
or ``b'fine_labels'`` (CIFAR-100). Nothing is downloaded here: users who have the files point at them
(``cifar10:<dir>``, ``cifar100:<dir>``).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipforge.errors import ClipforgeError


@dataclass
class ArraySet:
    """Images as an (N, 32, 32, 3) uint8 array, integer labels, class names (in label order)."""
    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def per_class(self, n: int | None, seed: int = 0) -> "ArraySet":
        """At most ``n`` images of every class (fixed seed), for quick runs."""
        if n is None:
            return self
        rng = np.random.RandomState(seed)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(self.labels == c))[:n]
                                       for c in range(len(self.class_names))]))
        return ArraySet(self.name, self.images[keep], self.labels[keep], self.class_names)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise ClipforgeError(f"CIFAR file '{path}' not found: point at the unpacked cifar-10-batches-py or "
                             "cifar-100-python folder")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ClipforgeError(f"CIFAR file '{path}' is not a python-pickle batch: {e}") from None


def _get(d: dict, key: str):
    """A value by bytes key (the original files) or str key (re-pickled files)."""
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise KeyError(key)


def _names(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _to_images(data) -> np.ndarray:
    arr = np.asarray(data, dtype=np.uint8)
    if arr.ndim != 2 or arr.shape[1] != 3072:
        raise ClipforgeError(f"CIFAR data must be N x 3072 uint8 rows, got shape {arr.shape}")
    return arr.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def load_cifar(root: str | Path, split: str = "test", variant: str | None = None) -> ArraySet:
    """``split``: 'train' or 'test'. ``variant``: 'cifar10', 'cifar100' or None (told by the files present)."""
    root = Path(root)
    if variant is None:
        variant = "cifar100" if (root / "meta").is_file() and not (root / "batches.meta").is_file() else "cifar10"
    if split not in ("train", "test"):
        raise ClipforgeError(f"CIFAR split must be 'train' or 'test', not {split!r}")
    if variant == "cifar10":
        names = _names(_get(_unpickle(root / "batches.meta"), "label_names"))
        files = [root / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [root / "test_batch"]
        label_key = "labels"
    elif variant == "cifar100":
        names = _names(_get(_unpickle(root / "meta"), "fine_label_names"))
        files = [root / split]
        label_key = "fine_labels"
    else:
        raise ClipforgeError(f"CIFAR variant must be cifar10 or cifar100, not {variant!r}")
    images, labels = [], []
    for f in files:
        d = _unpickle(f)
        try:
            images.append(_to_images(_get(d, "data")))
            labels.append(np.asarray(_get(d, label_key), dtype=np.int64))
        except KeyError as e:
            raise ClipforgeError(f"CIFAR file '{f}' has no {e.args[0]!r} entry") from None
    x, y = np.concatenate(images), np.concatenate(labels)
    if len(x) != len(y):
        raise ClipforgeError(f"CIFAR files in '{root}' hold {len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= len(names)):
        raise ClipforgeError(f"CIFAR labels in '{root}' fall outside the {len(names)} class names")
    return ArraySet(variant, x, y, names)


def write_cifar(root: str | Path, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                variant: str = "cifar10", split: str = "test") -> Path:
    """Write arrays in the original format (bytes keys) -- for tests and for users packing their own data."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    data = np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
    lab = [int(v) for v in labels]
    if variant == "cifar10":
        meta, batch, key = root / "batches.meta", root / ("test_batch" if split == "test" else "data_batch_1"), b"labels"
        meta_obj = {b"label_names": [n.encode() for n in class_names], b"num_vis": 3072}
    else:
        meta, batch, key = root / "meta", root / split, b"fine_labels"
        meta_obj = {b"fine_label_names": [n.encode() for n in class_names], b"coarse_label_names": []}
    with open(meta, "wb") as f:
        pickle.dump(meta_obj, f)
    with open(batch, "wb") as f:
        pickle.dump({b"batch_label": split.encode(), b"data": data, key: lab,
                     b"filenames": [f"{i}.png".encode() for i in range(len(lab))]}, f)
    return root


def load_zeroshot_source(spec: str, split: str = "test"):
    """``cifar10:<dir>``, ``cifar100:<dir>`` or ``fashion-mnist`` -> an ArraySet for zero-shot evaluation;
    ``folder:<dir>`` (one sub-folder per class, ``_`` in a folder name read as a space: ``ankle_boot`` is the
    class "ankle boot") -> a ClassDataset of file paths (``split`` does not apply; files are decoded later,
    where a file that does not decode is skipped and reported)."""
    scheme, _, rest = spec.partition(":")
    if scheme == "folder":
        if not rest:
            raise ClipforgeError(f"'{spec}' needs the folder: folder:<dir with one sub-folder per class>")
        from clipforge.data.folders import load_image_folder
        ds = load_image_folder(rest)
        ds.class_names = [" ".join(n.replace("_", " ").split()) for n in ds.class_names]
        return ds
    if scheme in ("cifar10", "cifar100"):
        if not rest:
            raise ClipforgeError(f"'{spec}' needs the folder: {scheme}:<unpacked python-pickle folder>")
        return load_cifar(rest, split, scheme)
    if spec == "fashion-mnist":
        from clipforge.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
        ds = load_fashion_mnist(split)
        return ArraySet("fashion-mnist", np.asarray(ds.images), np.asarray(ds.labels, dtype=np.int64), list(CLASS_NAMES))
    raise ClipforgeError(f"unknown zero-shot dataset '{spec}': use folder:<dir>, cifar10:<dir>, cifar100:<dir> "
                         "or fashion-mnist")


__all__ = ["ArraySet", "load_cifar", "write_cifar", "load_zeroshot_source"]
