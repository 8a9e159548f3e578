"""Reading a feature store (store.py) for training: shuffled mini-batches whose memory does not grow with N.

Each read maps one shard's ``.npy`` files (``np.load(mmap_mode="r")``), copies one block of rows out and drops
the mapping again. Why not keep every shard mapped for the whole run: the pages a mapping has touched count in
the process's resident memory until it is unmapped, so a pass over a 1M-row store would end with all of it
resident. Opening per block costs a header read; it keeps resident memory at one shuffle buffer.

The order (``ShuffledBatches``): each shard is cut into blocks of ``block_rows``; an epoch visits the blocks of
all shards in a random order, gathers consecutive blocks into a buffer of at most ``buffer_rows`` rows, shuffles
the rows of the buffer and serves mini-batches from it; rows left over at a buffer's end (fewer than a batch)
go to the front of the next buffer. So every row comes exactly once per epoch, rows of different shards mix in
one batch, and the order is a pure function of ``(seed, epoch)``: a resumed run sees the same batches.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from clipforge.embed.store import MANIFEST, StoreLayout, done_record
from clipforge.errors import ClipforgeError
from clipforge.util.extras import require


def _rows(path: Path, start: int, stop: int) -> np.ndarray:
    arr = np.load(path, mmap_mode="r")
    try:
        return np.array(arr[start:stop])
    finally:
        del arr  # unmap now: the pages read stay in the page cache, not in this process


class FeatureStore:
    """A finished store: its manifest, row counts per shard, and reads of row ranges and statistics."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.manifest = json.loads((self.root / MANIFEST).read_text())
        except (OSError, ValueError):
            raise ClipforgeError(f"'{self.root}' is not a feature store (no readable {MANIFEST}): write one with "
                                 "`clipforge embed --data wds:... --out DIR`") from None
        self.layout = StoreLayout(self.root, len(self.manifest["shards"]))
        counts, missing = [], []
        for i in range(self.layout.count):
            record = done_record(self.layout, self.manifest, i, check_input=False)
            if record is None:
                missing.append(i)
                continue
            counts.append(int(record["rows"]))
        if missing:
            raise ClipforgeError(f"feature store '{self.root}' has {len(missing)} unfinished shard(s) of "
                                 f"{self.layout.count} (first: {self.layout.name(missing[0])}); rerun the same "
                                 "`clipforge embed` command to finish it")
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        for i in range(self.layout.count):  # a done record and its arrays must agree, or a half store is read
            shapes = [np.load(p, mmap_mode="r").shape for p in self._paths(i)]
            if any(s[0] != self.counts[i] for s in shapes):
                raise ClipforgeError(f"shard {self.layout.name(i)} of '{self.root}': arrays of {shapes} rows do not "
                                     f"match its done record ({self.counts[i]} rows); delete done/ for it and rerun")

    def _paths(self, i: int) -> list[Path]:
        return [self.layout.image(i)] + ([self.layout.text(i)] if self.has_text else [])

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    @property
    def has_text(self) -> bool:
        return self.manifest["text_tower"] is not None

    @property
    def image_dim(self) -> int:
        return int(self.manifest["image_tower"]["dim"])

    @property
    def text_dim(self) -> int | None:
        return int(self.manifest["text_tower"]["dim"]) if self.has_text else None

    def read(self, shard: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows ``start:stop`` of one shard: (image features, text features or None), in the store's dtype."""
        img = _rows(self.layout.image(shard), start, stop)
        txt = _rows(self.layout.text(shard), start, stop) if self.has_text else None
        return img, txt

    def metadata(self):
        """Every shard's metadata in row order, as one pyarrow Table."""
        pq = require("pyarrow.parquet", "scale", "the feature store's metadata (parquet)")
        import pyarrow as pa
        return pa.concat_tables([pq.read_table(self.layout.metadata(i)) for i in range(self.layout.count)])

    def skipped(self) -> list[tuple[str, str]]:
        out = []
        for i in range(self.layout.count):
            out += [tuple(s) for s in json.loads(self.layout.done(i).read_text()).get("skipped", [])]
        return out

    def stats(self, side: str = "image", block_rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Exact mean and (unbiased) standard deviation of one side's features over the whole store, a block at a
        time in float64 (Chan et al.'s pairwise update), so no copy of all features is ever held."""
        if side not in ("image", "text") or (side == "text" and not self.has_text):
            raise ValueError(f"no {side} features in this store")
        n, mean, m2 = 0, None, None
        for i in range(self.layout.count):
            for s in range(0, int(self.counts[i]), block_rows):
                x = self.read(i, s, min(s + block_rows, int(self.counts[i])))[0 if side == "image" else 1]
                x = x.astype(np.float64)
                k, mu = len(x), x.mean(0)
                q = ((x - mu) ** 2).sum(0)
                if mean is None:
                    n, mean, m2 = k, mu, q
                    continue
                d = mu - mean
                total = n + k
                mean = mean + d * k / total
                m2 = m2 + q + d ** 2 * n * k / total
                n = total
        if mean is None:
            raise ClipforgeError(f"feature store '{self.root}' has no rows")
        return mean, np.sqrt(m2 / max(1, n - 1))


@dataclass
class Batch:
    image: np.ndarray
    text: np.ndarray | None
    rows: np.ndarray          # global row ids (the store's row order): each sample's identity


class ShuffledBatches:
    """Mini-batches over a store in a shuffled order fixed by ``(seed, epoch)``; at most ``max_rows_held`` rows
    are in memory at once, whatever the store's size (``peak_rows`` records what an epoch really held)."""

    def __init__(self, store: FeatureStore, batch_size: int, buffer_rows: int = 32768, block_rows: int = 2048,
                 seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise ClipforgeError(f"batch size is {batch_size}; it must be at least 1")
        if block_rows < 1 or buffer_rows < max(batch_size, block_rows):
            raise ClipforgeError(f"shuffle buffer of {buffer_rows} rows is smaller than the batch ({batch_size}) or "
                                 f"the block ({block_rows}); raise the buffer size")
        self.store, self.batch_size, self.buffer_rows, self.block_rows = store, batch_size, buffer_rows, block_rows
        self.seed, self.drop_last = seed, drop_last
        self.peak_rows = 0

    @property
    def max_rows_held(self) -> int:
        """The bound: a full buffer plus the partial batch carried over from the one before."""
        return self.buffer_rows + self.batch_size - 1

    def __len__(self) -> int:
        n = self.store.n
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def blocks(self, epoch: int) -> list[tuple[int, int, int]]:
        """This epoch's (shard, start, stop) blocks in visiting order."""
        out = [(i, s, min(s + self.block_rows, int(c)))
               for i, c in enumerate(self.store.counts) for s in range(0, int(c), self.block_rows)]
        order = np.random.default_rng([self.seed, epoch, 0]).permutation(len(out))
        return [out[j] for j in order]

    def buffers(self, epoch: int) -> list[list[tuple[int, int, int]]]:
        """The blocks grouped into buffers of at most ``buffer_rows`` rows each."""
        groups, current, rows = [], [], 0
        for b in self.blocks(epoch):
            if current and rows + (b[2] - b[1]) > self.buffer_rows:
                groups.append(current)
                current, rows = [], 0
            current.append(b)
            rows += b[2] - b[1]
        return groups + ([current] if current else [])

    def _fill(self, group: list[tuple[int, int, int]], carry: tuple | None, held: int) -> tuple:
        """One buffer: the carried-over rows, then the group's blocks, read straight into preallocated arrays."""
        st = self.store
        img = np.empty((held, st.image_dim), st.dtype)
        txt = np.empty((held, st.text_dim), st.dtype) if st.has_text else None
        rows = np.empty(held, np.int64)
        o = 0
        if carry is not None:
            o = len(carry[2])
            img[:o], rows[:o] = carry[0], carry[2]
            if txt is not None:
                txt[:o] = carry[1]
        for i, s, e in group:
            a, b = st.read(i, s, e)
            img[o:o + e - s], rows[o:o + e - s] = a, np.arange(s, e) + st.offsets[i]
            if txt is not None:
                txt[o:o + e - s] = b
            o += e - s
        return img, txt, rows

    def __call__(self, epoch: int) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, epoch, 1])
        carry: tuple | None = None          # rows left at the end of the last buffer (fewer than a batch)
        self.peak_rows = 0
        for group in self.buffers(epoch):
            held = sum(e - s for _, s, e in group) + (len(carry[2]) if carry is not None else 0)
            self.peak_rows = max(self.peak_rows, held)
            img, txt, rows = self._fill(group, carry, held)
            perm = rng.permutation(held)    # batches are gathered through it: no shuffled copy of the buffer
            full = held - held % self.batch_size
            for s in range(0, full, self.batch_size):
                idx = perm[s:s + self.batch_size]
                yield Batch(img[idx], None if txt is None else txt[idx], rows[idx])
            rest = perm[full:]
            carry = (img[rest], None if txt is None else txt[rest], rows[rest]) if len(rest) else None
            del img, txt, rows
        if carry is not None and not self.drop_last:
            yield Batch(*carry)


__all__ = ["FeatureStore", "ShuffledBatches", "Batch"]
