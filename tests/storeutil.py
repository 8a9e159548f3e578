"""Tiny WebDataset shards and feature stores for the feature-store tests (webdataset's own TarWriter)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from clipforge.embed.store import StoreLayout, ensure_manifest, file_digest, shard_key, write_shard

IMAGE_TOWER, IMAGE_SIZE, TEXT_TOWER = "pkg:efficientnet-lite0", 32, "pkg:all-MiniLM-L6-v2"
WORDS = ["red", "blue", "green", "cat", "dog", "house", "tree", "car", "boat", "star", "moon", "sun"]


def caption(shard: int, k: int) -> str:
    rng = np.random.RandomState(1000 * shard + k)
    return "a " + " ".join(rng.choice(WORDS, 3)) + f" number {k}"


def make_shards(folder: Path, n_shards: int = 3, per_shard: int = 6, bad: bool = False, seed: int = 0) -> list[Path]:
    """``n_shards`` tars of ``per_shard`` JPEG + caption samples; with ``bad``, shard 1 also holds an image that
    does not decode and a sample without a caption (both must be skipped and reported, never crash)."""
    import webdataset as wds
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    paths = []
    for s in range(n_shards):
        p = folder / f"{s:05d}.tar"
        with wds.TarWriter(str(p)) as w:
            for k in range(per_shard):
                buf = io.BytesIO()
                Image.fromarray(rng.randint(0, 255, (36, 44, 3), np.uint8)).save(buf, "JPEG")
                w.write({"__key__": f"{s:05d}{k:04d}", "jpg": buf.getvalue(), "txt": caption(s, k)})
            if bad and s == 1:
                w.write({"__key__": "broken-image", "jpg": b"not a jpeg at all", "txt": "a broken picture"})
                buf = io.BytesIO()
                Image.new("RGB", (20, 20)).save(buf, "JPEG")
                w.write({"__key__": "no-caption", "jpg": buf.getvalue(), "json": json.dumps({"url": "x"}).encode()})
        paths.append(p)
    return paths


def towers():
    from clipforge.towers import build_tower
    return (build_tower(IMAGE_TOWER, "image", IMAGE_SIZE).lock(), build_tower(TEXT_TOWER, "text").lock())


def synthetic_store(root: Path, counts: list[int], image_dim: int = 6, text_dim: int = 4, seed: int = 0,
                    manifest: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A finished store of random features with ``counts[i]`` rows in shard i (no towers involved); returns the
    full image and text matrices in row order, for the reader tests to compare against."""
    rng = np.random.RandomState(seed)
    shards = [f"synthetic-{i}" for i in range(len(counts))]
    manifest = manifest or {"format": 1, "layout": "clip-retrieval", "dtype": "float32", "caption_field": "txt",
                            "image_tower": {"id": "test:image", "fingerprint": "0", "dim": image_dim},
                            "text_tower": {"id": "test:text", "fingerprint": "0", "dim": text_dim}}
    manifest = {**manifest, "shards": shards}
    layout = ensure_manifest(root, manifest)
    imgs, txts = [], []
    for i, c in enumerate(counts):
        img = rng.randn(c, manifest["image_tower"]["dim"]).astype(manifest["dtype"])
        txt = rng.randn(c, manifest["text_tower"]["dim"]).astype(manifest["dtype"])
        keys = [f"{i}-{k}" for k in range(c)]
        digest = file_digest(shards[i])
        write_shard(layout, i, img, txt, {"image_path": keys, "caption": keys, "key": keys, "shard": [shards[i]] * c},
                    {"key": shard_key(manifest, digest), "shard": shards[i], "digest": digest, "skipped": []})
        imgs.append(img)
        txts.append(txt)
    return np.concatenate(imgs), np.concatenate(txts)


__all__ = ["make_shards", "towers", "synthetic_store", "caption", "StoreLayout"]
