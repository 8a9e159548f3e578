"""Embeddings of frozen towers, computed once and kept on disk.

Key = tower id + preprocessing (the tower's fingerprint) + data fingerprint (+ the clipforge cache
format). Changing any of them changes the key, so a stale embedding is never reused; keeping all of
them keeps a second run from recomputing. Files are written to a temporary name and renamed, so a
crash mid-write never leaves a half file under a valid key.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from clipforge.data.dataset import ClassDataset, SkipReport
from clipforge.data.images import load_image
from clipforge.util.files import atomic_write
from clipforge.embed.fast import MIN_ITEMS, fast_encoder, requested_backend
from clipforge.towers.base import ImagePreprocess, Tower

FORMAT = 2  # 2: EfficientNet-Lite features before this were computed with the wrong activation


def atomic_save_npz(path: Path, **arrays) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays), hook="cache-write")  # test hook: tests/test_crash.py


@dataclass
class Embedded:
    """Features of the items that decoded, their positions in the input, and what was skipped."""
    features: np.ndarray
    kept: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)


STALE_SECONDS = 3600  # a temporary file this old belongs to a writer that died (kill -9, power loss)


class EmbeddingCache:
    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None
        self.hits = 0
        self.misses = 0
        if self.root is not None and self.root.is_dir():
            for tmp in self.root.glob(".tmp-*.npz"):  # half-written entries of crashed runs: never read, now swept
                try:
                    if time.time() - tmp.stat().st_mtime > STALE_SECONDS:
                        tmp.unlink()
                except OSError:
                    pass

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


def _resize_target(tower: Tower) -> int | None:
    """The square size the tower's ImagePreprocess resizes to, so decoding threads can resize too (same PIL call)."""
    return tower.pre.size if isinstance(tower.pre, ImagePreprocess) else None


def _decoder(size: int | None):
    def decode(item):
        img, reason = load_image(item)
        if img is None or size is None:
            return img, reason
        # exactly what ImagePreprocess does to a PIL image, done here in a worker thread (PIL releases the GIL)
        return np.asarray(img.resize((size, size))), None
    return decode


def _decoded(pool: ThreadPoolExecutor, decode, items, lookahead: int):
    """(index, image or None, reason) in input order, decoding up to ``lookahead`` items ahead of the consumer:
    the next batch decodes while the model runs on this one, and only that window is ever held in memory."""
    pending: deque = deque()
    nxt = 0
    for i in range(len(items)):
        while nxt < len(items) and len(pending) < lookahead:
            pending.append(pool.submit(decode, items[nxt]))
            nxt += 1
        img, reason = pending.popleft().result()
        yield i, img, reason


def embed_images(tower: Tower, items, batch_size: int = 64, workers: int = 2, progress: bool = True,
                 backend: str | None = None) -> Embedded:
    """Embed image files (decoded in a thread pool, failures skipped) or a uint8 array batch.

    Decoding overlaps the model; the model runs on the fastest backend for this machine (fast_embed.py;
    ``backend`` or CLIPFORGE_EMBED_BACKEND picks one, 'off' the plain ``Tower.encode``). Memory stays bounded
    by a couple of batches, however many items there are.
    """
    n = len(items)
    name = requested_backend(backend)
    fast = None
    if name != "off" and (n >= MIN_ITEMS or name != "auto"):
        fast = fast_encoder(tower, name)

    def forward(batch) -> np.ndarray:
        if fast is not None:
            return fast(tower.prepare(batch))
        return tower.encode(batch, batch_size=batch_size)

    def prepare(chunk):  # array batches: the next one is prepared in a thread while this one runs
        return tower.prepare(chunk) if fast is not None else chunk

    def run(prepared) -> np.ndarray:
        return fast(prepared) if fast is not None else tower.encode(prepared, batch_size=batch_size)

    out: np.ndarray | None = None        # (n, dim), filled in place: no list of chunks, no concatenated copy
    done = 0
    kept, skipped = [], []

    def put(f: np.ndarray) -> None:
        nonlocal out, done
        if out is None:
            out = np.empty((n, f.shape[1]), np.float32)
        out[done:done + len(f)] = f
        done += len(f)

    bar = tqdm(total=n, desc=f"embed {tower.tower_id}", unit="img", disable=not progress, leave=False)
    if isinstance(items, np.ndarray):
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(prepare, items[:batch_size]) if n else None
            for start in range(0, n, batch_size):
                current = ahead.result()
                if start + batch_size < n:
                    ahead = pool.submit(prepare, items[start + batch_size:start + 2 * batch_size])
                put(run(current))
                m = min(batch_size, n - start)
                kept += range(start, start + m)
                bar.update(m)
    else:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            images, idx = [], []
            for i, img, reason in _decoded(pool, _decoder(_resize_target(tower)), items, 2 * batch_size):
                if img is None:
                    skipped.append((str(items[i]), reason))
                else:
                    images.append(img)
                    idx.append(i)
                if len(images) == batch_size or (i == n - 1 and images):
                    put(forward(images))
                    kept += idx
                    images, idx = [], []
                bar.update(1)
    bar.close()
    f = out[:done] if out is not None else np.zeros((0, tower.dim), np.float32)
    return Embedded(f, np.asarray(kept, dtype=np.int64), skipped)


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
