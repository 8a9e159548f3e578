"""Embeddings of frozen towers, computed once and kept on disk.

Key = tower id + preprocessing (the tower's fingerprint) + data fingerprint (+ the clipforge cache
format). Changing any of them changes the key, so a stale embedding is never reused; keeping all of
them keeps a second run from recomputing. Files are written to a temporary name and renamed, so a
crash mid-write never leaves a half file under a valid key.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .data.dataset import ClassDataset, SkipReport
from .data.images import load_image
from .towers.base import Tower

FORMAT = 2  # 2: EfficientNet-Lite features before this were computed with the wrong activation


def atomic_save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Embedded:
    """Features of the items that decoded, their positions in the input, and what was skipped."""
    features: np.ndarray
    kept: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)


class EmbeddingCache:
    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None
        self.hits = 0
        self.misses = 0

    def key(self, tower: Tower, data_fingerprint: str) -> str:
        blob = json.dumps([FORMAT, tower.fingerprint(), data_fingerprint])
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _path(self, key: str) -> Path | None:
        return self.root / f"{key}.npz" if self.root else None

    def get_or_compute(self, tower: Tower, data_fingerprint: str, compute) -> Embedded:
        path = self._path(self.key(tower, data_fingerprint))
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    skipped = json.loads(str(z["skipped"]))
                    self.hits += 1
                    return Embedded(z["features"], z["kept"], [tuple(s) for s in skipped])
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # unreadable cache entry: recompute it
        self.misses += 1
        emb = compute()
        if path is not None:
            atomic_save_npz(path, features=emb.features, kept=emb.kept,
                            skipped=np.array(json.dumps(emb.skipped, ensure_ascii=False)))
        return emb


def _decode_batch(pool: ThreadPoolExecutor, items) -> tuple[list, list[int], list[tuple[str, str]]]:
    images, ok, bad = [], [], []
    for i, (img, reason) in enumerate(pool.map(load_image, items)):
        if img is None:
            bad.append((str(items[i]), reason))
        else:
            images.append(img)
            ok.append(i)
    return images, ok, bad


def embed_images(tower: Tower, items, batch_size: int = 64, workers: int = 2, progress: bool = True) -> Embedded:
    """Embed image files (decoded in a thread pool, failures skipped) or a uint8 array batch."""
    n = len(items)
    feats, kept, skipped = [], [], []
    bar = tqdm(total=n, desc=f"embed {tower.tower_id}", unit="img", disable=not progress, leave=False)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, n, batch_size):
            chunk = items[start:start + batch_size]
            if isinstance(items, np.ndarray):
                images, ok, bad = chunk, list(range(len(chunk))), []
            else:
                images, ok, bad = _decode_batch(pool, chunk)
            skipped += bad
            if ok:
                feats.append(tower.encode(images, batch_size=batch_size))
                kept += [start + i for i in ok]
            bar.update(len(chunk))
    bar.close()
    f = np.concatenate(feats) if feats else np.zeros((0, tower.dim), np.float32)
    return Embedded(f.astype(np.float32), np.asarray(kept, dtype=np.int64), skipped)


def embed_dataset(tower: Tower, ds: ClassDataset, cache: EmbeddingCache, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Cached features and labels of the items of ``ds`` that decode; skipped ones go to ``ds.skipped``."""
    emb = cache.get_or_compute(tower, ds.fingerprint(), lambda: embed_images(tower, ds.images, **kw))
    for item, reason in emb.skipped:
        ds.skipped.add(item, reason)
    return emb.features, ds.labels[emb.kept]


def embed_texts(tower: Tower, texts: list[str], cache: EmbeddingCache, batch_size: int = 64) -> np.ndarray:
    fp = hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()[:16]
    emb = cache.get_or_compute(tower, "text:" + fp, lambda: Embedded(
        tower.encode(list(texts), batch_size=batch_size).astype(np.float32), np.arange(len(texts))))
    return emb.features


__all__ = ["EmbeddingCache", "Embedded", "embed_images", "embed_dataset", "embed_texts", "SkipReport"]
