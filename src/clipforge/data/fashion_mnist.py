"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (or a download for users elsewhere).

The idx files hold no class names; the ten names below are Zalando's, in label order.
"""
from __future__ import annotations

import gzip
import os
import urllib.request
from pathlib import Path

import numpy as np

from clipforge.errors import ClipforgeError
from clipforge.util.paths import cache_dir
from clipforge.data.dataset import ClassDataset

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
PACKAGED_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: Path) -> np.ndarray:
    """Read an (optionally gzipped) idx file: images -> (n, rows, cols) uint8, labels -> (n,) uint8."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_root(root: str | Path | None = None) -> Path:
    """The packaged copy first, then ``$CLIPFORGE_DATA/fashion-mnist``, downloading there as a last resort."""
    candidates = [Path(root)] if root else []
    candidates += [PACKAGED_DIR, cache_dir("data") / "fashion-mnist"]
    for c in candidates:
        if all((c / f).is_file() for pair in FILES.values() for f in pair):
            return c
    target = candidates[-1]
    try:  # real code for users with internet; not exercised on the offline build machines
        target.mkdir(parents=True, exist_ok=True)
        for pair in FILES.values():
            for f in pair:
                if not (target / f).is_file():
                    urllib.request.urlretrieve(URL + f, target / (f + ".part"))
                    os.replace(target / (f + ".part"), target / f)
    except OSError as e:
        raise ClipforgeError("Fashion-MNIST not found: install the Debian package 'dataset-fashion-mnist' "
                             f"(sudo apt-get install dataset-fashion-mnist) or put the idx files in {target} ({e})")
    return target


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> ClassDataset:
    base = find_root(root)
    img_file, lab_file = FILES[split]
    images, labels = read_idx(base / img_file), read_idx(base / lab_file).astype(np.int64)
    return ClassDataset(f"fashion-mnist-{split}", list(CLASS_NAMES), images, labels, grey_light_on_dark=True)
