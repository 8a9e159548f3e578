"""Features of one WebDataset shard, streamed: samples decoded and resized in a thread a couple of batches ahead
of the towers, the towers run a batch at a time, so memory holds one shard's features and two batches of images.

The feature store (store.py) calls this once per shard; the result is in the shard's order, bad samples left out
and listed in ``skipped`` (data/wds.py decides what is bad).
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from clipforge.data.dataset import SkipReport
from clipforge.data.wds import iter_samples
from clipforge.embed.fast import fast_encoder, requested_backend
from clipforge.errors import ClipforgeError
from clipforge.towers.base import ImagePreprocess, Tower


@dataclass
class ShardFeatures:
    image: np.ndarray
    text: np.ndarray | None
    keys: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    skipped: SkipReport = field(default_factory=SkipReport)


def _batches(shard: str, report: SkipReport, caption_field: str, size: int | None, batch_size: int) -> Iterator:
    """(images, keys, captions) batches of one shard; images resized to the tower's input in this (worker)
    thread, the same PIL call ImagePreprocess makes, so decoding overlaps the model."""
    images, keys, captions = [], [], []
    for s in iter_samples([shard], report, caption_field):
        images.append(np.asarray(s.image.resize((size, size))) if size else s.image)
        keys.append(s.key)
        captions.append(s.caption)
        if len(images) == batch_size:
            yield images, keys, captions
            images, keys, captions = [], [], []
    if images:
        yield images, keys, captions


def _ahead(gen: Iterator, depth: int = 2) -> Iterator:
    """Run ``gen`` in a thread, ``depth`` items ahead of the consumer (bounded memory); its errors re-raise here."""
    q: queue.Queue = queue.Queue(depth)
    end, stop = object(), threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run():
        try:
            for item in gen:
                if not put(item):
                    return
            put(end)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(e)

    threading.Thread(target=run, daemon=True).start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _cast(x: np.ndarray, dtype: str, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = x.astype(dtype, copy=False)
    if not np.isfinite(out).all():
        raise ClipforgeError(f"{what} features do not fit {dtype} (values up to {float(np.abs(x).max()):.3g}); "
                             "rerun with --dtype float32")
    return out


def embed_shard(shard: str, image_tower: Tower, text_tower: Tower | None, dtype: str = "float16",
                caption_field: str = "txt", batch_size: int = 64, backend: str | None = None) -> ShardFeatures:
    """Features of one shard's usable samples (bad ones skipped into ``skipped``), in the shard's order."""
    report = SkipReport()
    size = image_tower.pre.size if isinstance(image_tower.pre, ImagePreprocess) else None
    name = requested_backend(backend)
    fast = fast_encoder(image_tower, name) if name != "off" else None   # shards are large: set it up once per run
    img, txt, keys, caps = [], [], [], []
    for images, k, c in _ahead(_batches(shard, report, caption_field, size, batch_size)):
        img.append(fast(image_tower.prepare(images)) if fast is not None else image_tower.encode(images, batch_size))
        if text_tower is not None:
            txt.append(np.asarray(text_tower.encode(c, batch_size=batch_size), dtype=np.float32))
        keys += k
        caps += c
    image = _cast(np.concatenate(img) if img else np.zeros((0, image_tower.dim), np.float32), dtype, "image")
    text = None
    if text_tower is not None:
        text = _cast(np.concatenate(txt) if txt else np.zeros((0, text_tower.dim), np.float32), dtype, "text")
    return ShardFeatures(image, text, keys, caps, report)


__all__ = ["ShardFeatures", "embed_shard"]
