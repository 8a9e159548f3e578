"""Class datasets on disk: one folder per class, and the AwA2 layout the seed's users already have.

Files are only listed here; decoding (and skipping what does not decode) happens once, in the
embedding step, which records every skipped file with its reason.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from clipforge.errors import ClipforgeError
from clipforge.data.dataset import ClassDataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _list_images(folder: Path) -> list[Path]:
    # Every regular file is listed (a .txt named .jpg still reaches the decoder and is reported there);
    # hidden files and obvious sidecars are not.
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and (p.suffix.lower() in IMAGE_SUFFIXES or p.suffix == ""))


def load_image_folder(root: str | Path, class_names: list[str] | None = None) -> ClassDataset:
    """``root/<class>/*.jpg``. Class order = ``class_names`` if given, else sorted folder names."""
    root = Path(root)
    if not root.is_dir():
        raise ClipforgeError(f"image folder '{root}' does not exist")
    names = class_names or sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ClipforgeError(f"image folder '{root}' has no class sub-folders (expected root/<class>/<image>)")
    paths, labels = [], []
    for c, name in enumerate(names):
        d = root / name
        if not d.is_dir():
            raise ClipforgeError(f"class folder '{d}' does not exist")
        files = _list_images(d)
        paths += [str(p) for p in files]
        labels += [c] * len(files)
    return ClassDataset(f"folder:{root.name}", names, paths, np.asarray(labels, dtype=np.int64))


def _read_class_list(path: Path) -> list[str]:
    """AwA2 class files: '1\\tantelope' or just 'antelope' per line."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts:
            out.append(parts[-1])
    return out


def load_awa2(root: str | Path) -> tuple[ClassDataset, list[int]]:
    """AwA2: ``JPEGImages/<class>/*.jpg``, ``classes.txt``, ``testclasses.txt``.

    Returns the dataset over all classes of ``classes.txt`` and the unseen (test) class ids.
    """
    root = Path(root)
    for f in ("classes.txt", "testclasses.txt"):
        if not (root / f).is_file():
            raise ClipforgeError(f"AwA2 folder '{root}' has no {f}")
    names = _read_class_list(root / "classes.txt")
    unseen = [names.index(n) for n in _read_class_list(root / "testclasses.txt") if n in names]
    ds = load_image_folder(root / "JPEGImages", names)
    ds.name = f"awa2:{root.name}"
    return ds, unseen
