"""Embedding an index's images: content hashes (repeats and already-indexed files skipped), then the image tower
through the embedding cache in chunks, so a crashed build that is run again recomputes only unfinished chunks."""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from clipforge.embed.cache import EmbeddingCache, embed_images
from clipforge.index.sources import SourceItem
from clipforge.index.store import Record

CHUNK = 1024  # images per embedding-cache entry


def file_digest(path: str) -> tuple[str, int]:
    """sha256 and size of a file listed by sources.py (a real path: O_NOFOLLOW refuses a symlink swapped in since)."""
    h = hashlib.sha256()
    size = 0
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def digest_items(items: list[SourceItem], known: dict[str, int], workers: int):
    """Hash every file; drop unreadable ones, repeats within the batch, and files already in the index."""
    def digest(it):
        try:
            return file_digest(it.path)
        except OSError as e:
            return None, f"cannot read: {e.strerror or e}"
    todo, skipped, already, first = [], [], 0, {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for it, (sha, size) in zip(items, pool.map(digest, items)):
            if sha is None:
                skipped.append((it.path, size))
            elif sha in known:
                already += 1
            elif sha in first:
                skipped.append((it.path, f"same content as {first[sha]}"))
            else:
                first[sha] = it.path
                todo.append((it, sha, size))
    return todo, skipped, already


def image_size(path: str) -> tuple[int | None, int | None]:
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - metadata only; the image already decoded once
        return None, None


def embed_items(model, todo, cache: EmbeddingCache, batch_size: int, workers: int, progress: bool):
    """Embed (item, sha, size) triples in cached chunks -> (vectors (n, D), records without ids, skipped)."""
    tower = model.image_tower
    vecs, recs, skipped = [], [], []
    bar = tqdm(total=len(todo), desc="embed images", unit="img", disable=not progress)
    for s in range(0, len(todo), CHUNK):
        chunk = todo[s:s + CHUNK]
        paths = [it.path for it, _, _ in chunk]
        fp = "index:" + hashlib.sha256("|".join(sha for _, sha, _ in chunk).encode()).hexdigest()[:24]
        emb = cache.get_or_compute(tower, fp, lambda: embed_images(tower, paths, batch_size, workers, progress=False))
        skipped += [(str(p), r) for p, r in emb.skipped]
        if len(emb.kept):
            with torch.inference_mode():
                model.eval()
                v = model.embed_image_features(torch.from_numpy(np.asarray(emb.features, np.float32))).numpy()
            vecs.append(v.astype(np.float32))
            for i in emb.kept:
                it, sha, size = chunk[int(i)]
                w, h = image_size(it.path)
                recs.append(Record(-1, it.path, it.caption, w, h, size, sha))
        bar.update(len(chunk))
    bar.close()
    dim = int(vecs[0].shape[1]) if vecs else 0
    return (np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)), recs, skipped
