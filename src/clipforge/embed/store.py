"""The sharded feature store: features of locked towers, one set of files per input shard, safe against kill -9.

Layout (the one clip-retrieval's ``inference`` writes, so its users and tools read it unchanged)::

    DIR/store.json                      what was embedded: towers (id, fingerprint, input size, dim), dtype, shards
    DIR/img_emb/img_emb_{i}.npy         (rows, image dim) image-tower features of input shard i
    DIR/text_emb/text_emb_{i}.npy       (rows, text dim) text-tower features of the same rows' captions
    DIR/metadata/metadata_{i}.parquet   one row per sample: image_path (= key), caption, key, shard
    DIR/done/{i}.json                   written LAST: the shard's content key, row count and skipped samples

``i`` is the shard's position in the sorted shard list, zero-padded to the width of the shard count as
clip-retrieval pads its partitions, so sorted file names are shard order. Row r of shard i's three files is one
sample. Features are float16 by default, as clip-retrieval stores them (``dtype="float32"`` keeps full precision).

Why raw tower features and not L2-normalised ones (clip-retrieval normalises its CLIP vectors): clipforge's heads
standardise and project the raw features, in training and at inference, so a store for training must hold what
the towers output. Normalise the rows yourself before building an inner-product index from them.

Why per shard, and why a done record: a collection of thousands of shards takes hours to embed, and a job that is
killed must not start again from zero, nor trust a half-written file. Each file goes to a temporary name in its
folder, is fsynced and renamed into place; the done record, last, holds the shard's content key: the towers'
fingerprints (id + preprocessing, as the embedding cache keys them), the dtype, the caption field and a SHA-256
of the shard's bytes. A shard counts as done only when its record is there and its key matches, so a rerun skips
finished shards, recomputes a shard whose bytes or towers changed, and never reads a file of an unfinished one.

Under ``torchrun`` rank r of W embeds the shards with ``i % W == r``; a shard's files depend only on the shard and
the towers, so W processes write exactly the files one process writes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from clipforge.embed.stream import embed_shard
from clipforge.errors import ClipforgeError
from clipforge.towers.base import ImagePreprocess, Tower
from clipforge.util.extras import require
from clipforge.util.files import atomic_write, fsync_dir
from clipforge.util.testhooks import pause_point

FORMAT = 1
DTYPES = ("float16", "float32")
MANIFEST = "store.json"


def _parquet():
    return require("pyarrow.parquet", "scale", "the feature store's metadata (parquet)")


# -- layout -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoreLayout:
    """Where shard ``i``'s files live in a store of ``count`` shards."""
    root: Path
    count: int

    def name(self, i: int) -> str:
        return str(i).zfill(len(str(max(1, self.count))))

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def image(self, i: int) -> Path:
        return self.root / "img_emb" / f"img_emb_{self.name(i)}.npy"

    def text(self, i: int) -> Path:
        return self.root / "text_emb" / f"text_emb_{self.name(i)}.npy"

    def metadata(self, i: int) -> Path:
        return self.root / "metadata" / f"metadata_{self.name(i)}.parquet"

    def done(self, i: int) -> Path:
        return self.root / "done" / f"{self.name(i)}.json"


def _sweep(layout: StoreLayout, mine: list[int]) -> None:
    """Remove temporary files a killed run left for this process's shards (never another rank's live ones)."""
    for i in mine:
        for final in (layout.image(i), layout.text(i), layout.metadata(i), layout.done(i)):
            for tmp in final.parent.glob(f".tmp-{final.stem}-*"):
                tmp.unlink(missing_ok=True)


# -- what a shard's key is made of ----------------------------------------------------------------------------

def tower_identity(tower: Tower | None) -> dict | None:
    """What the store records of a tower: enough to rebuild it (id, input size) and to key on it (fingerprint)."""
    if tower is None:
        return None
    if not tower.weights_from_id:
        raise ClipforgeError(f"tower '{tower.tower_id}' learns its weights here, so its id does not rebuild it and "
                             "a store of its features could not be trained on later; embed with a pretrained tower "
                             "(pkg:, hf:, st:)")
    pre = tower.pre
    out = {"id": tower.tower_id, "fingerprint": tower.fingerprint(), "dim": int(tower.dim)}
    if isinstance(pre, ImagePreprocess):
        out.update(image_size=pre.size, invert=pre.invert)
    return out


def file_digest(path: str, known: dict | None = None) -> dict:
    """Size, mtime and SHA-256 of a shard's bytes; the hash in ``known`` is reused while size and mtime match
    (so a rerun over a thousand finished shards does not read them all again)."""
    try:
        st = os.stat(path)
    except OSError:
        return {"missing": True}
    if known and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns and known.get("sha256"):
        return known
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}


def shard_key(manifest: dict, digest: dict) -> str:
    content = digest.get("sha256", "missing")
    blob = json.dumps([FORMAT, manifest["image_tower"], manifest["text_tower"], manifest["dtype"],
                       manifest["caption_field"], content], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def make_manifest(image_tower: Tower, text_tower: Tower | None, shards: list[str], dtype: str,
                  caption_field: str) -> dict:
    if dtype not in DTYPES:
        raise ClipforgeError(f"--dtype is '{dtype}'; choose float16 (as clip-retrieval) or float32")
    return {"format": FORMAT, "layout": "clip-retrieval", "image_tower": tower_identity(image_tower),
            "text_tower": tower_identity(text_tower), "dtype": dtype, "caption_field": caption_field,
            "shards": list(shards)}


def ensure_manifest(root: Path, manifest: dict) -> StoreLayout:
    """Write the manifest, or check that the one already in ``root`` describes the same store.

    Every rank writes the same bytes, so ranks need no coordination here. A folder that holds a store of other
    towers, dtype or shards is refused: recomputing it in place would throw away finished work by mistake.
    """
    path = root / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if isinstance(old, dict):
            for name in ("format", "image_tower", "text_tower", "dtype", "caption_field", "shards"):
                if old.get(name) != manifest[name]:
                    shown = lambda v: json.dumps(v)[:160]  # noqa: E731
                    raise ClipforgeError(f"'{root}' already holds a feature store with {name} {shown(old.get(name))}, "
                                         f"but this run has {shown(manifest[name])}; use another --out, or delete "
                                         f"'{root}' to start over")
            return StoreLayout(root, len(manifest["shards"]))
    blob = json.dumps(manifest, indent=1, ensure_ascii=False).encode()
    atomic_write(path, lambda f: f.write(blob))
    return StoreLayout(root, len(manifest["shards"]))


def read_done(layout: StoreLayout, i: int) -> dict | None:
    try:
        record = json.loads(layout.done(i).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def done_record(layout: StoreLayout, manifest: dict, i: int, check_input: bool = True) -> dict | None:
    """Shard ``i``'s record when the shard is finished under the current key (its files all present), else None.

    ``check_input`` (the writer) also checks the input shard's bytes against the key; a reader does not, so a
    store stays readable where its input shards are not (another machine, shards deleted after embedding).
    """
    record = read_done(layout, i)
    if record is None or not isinstance(record.get("digest"), dict):
        return None
    digest = file_digest(manifest["shards"][i], record["digest"]) if check_input else record["digest"]
    files = [layout.image(i), layout.metadata(i)] + ([layout.text(i)] if manifest["text_tower"] else [])
    if record.get("key") != shard_key(manifest, digest) or not all(p.is_file() for p in files):
        return None
    return record


# -- writing one shard ----------------------------------------------------------------------------------------

def _npy_writer(array: np.ndarray):
    return lambda f: np.save(f, array, allow_pickle=False)


def write_shard(layout: StoreLayout, i: int, image: np.ndarray, text: np.ndarray | None, columns: dict,
                record: dict) -> None:
    """Shard ``i``'s arrays, then its metadata, then its done record (the commit point), each atomically."""
    pq = _parquet()
    import pyarrow as pa
    layout.done(i).unlink(missing_ok=True)           # a stale record must not vouch for the files replaced below
    fsync_dir(layout.done(i).parent)
    atomic_write(layout.image(i), _npy_writer(image), hook="store-write")
    if text is not None:
        atomic_write(layout.text(i), _npy_writer(text))
    sink = io.BytesIO()
    pq.write_table(pa.table({k: pa.array(v, type=pa.string()) for k, v in columns.items()}), sink)
    atomic_write(layout.metadata(i), lambda f: f.write(sink.getvalue()))
    blob = json.dumps({**record, "rows": int(len(image))}, indent=1, ensure_ascii=False).encode()
    atomic_write(layout.done(i), lambda f: f.write(blob))


# -- the whole store ----------------------------------------------------------------------------------------

@dataclass
class EmbedSummary:
    shards: int
    mine: list[int]
    computed: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    rows: int = 0
    skipped: int = 0
    seconds: float = 0.0


def embed_to_store(shards: list[str], out: str | Path, image_tower: Tower, text_tower: Tower | None,
                   rank: int = 0, world: int = 1, dtype: str = "float16", caption_field: str = "txt",
                   batch_size: int = 64, backend: str | None = None, log: Callable[[str], None] | None = None
                   ) -> EmbedSummary:
    """Embed this rank's shards (``i % world == rank``) into the store at ``out``, skipping finished ones."""
    if not shards:
        raise ClipforgeError("no shards to embed: --data matched nothing")
    t0 = time.perf_counter()
    manifest = make_manifest(image_tower, text_tower, shards, dtype, caption_field)
    layout = ensure_manifest(Path(out), manifest)
    mine = [i for i in range(len(shards)) if i % world == rank]
    _sweep(layout, mine)
    summary = EmbedSummary(len(shards), mine)
    for i in mine:
        record = done_record(layout, manifest, i)
        if record is not None:
            summary.reused.append(i)
            summary.rows += record["rows"]
            summary.skipped += len(record.get("skipped", []))
            if log:
                log(f"shard {layout.name(i)} ({Path(shards[i]).name}): already done, {record['rows']} rows kept")
            continue
        digest = file_digest(shards[i])
        ts = time.perf_counter()
        feats = embed_shard(shards[i], image_tower, text_tower, dtype, caption_field, batch_size, backend)
        columns = {"image_path": feats.keys, "caption": feats.captions, "key": feats.keys,
                   "shard": [shards[i]] * len(feats.keys)}
        record = {"key": shard_key(manifest, digest), "shard": shards[i], "digest": digest,
                  "skipped": [list(s) for s in feats.skipped.items], "seconds": round(time.perf_counter() - ts, 3)}
        write_shard(layout, i, feats.image, feats.text, columns, record)
        summary.computed.append(i)
        summary.rows += len(feats.image)
        summary.skipped += len(feats.skipped)
        if log:
            log(f"shard {layout.name(i)} ({Path(shards[i]).name}): {len(feats.image)} rows, "
                f"{len(feats.skipped)} skipped, {record['seconds']:.1f} s")
        pause_point("store-shard")  # test hook: after a shard is committed
    summary.seconds = time.perf_counter() - t0
    return summary


def unfinished(out: str | Path) -> list[int]:
    """Shards of the store at ``out`` that are not done under their current key (empty: the store is complete)."""
    root = Path(out)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        raise ClipforgeError(f"'{root}' is not a feature store (no readable {MANIFEST}): write one with "
                             "`clipforge embed --data wds:... --out DIR`") from None
    layout = StoreLayout(root, len(manifest["shards"]))
    return [i for i in range(layout.count) if done_record(layout, manifest, i) is None]


__all__ = ["StoreLayout", "EmbedSummary", "embed_to_store", "write_shard",
           "make_manifest", "ensure_manifest", "done_record", "read_done", "shard_key", "file_digest",
           "tower_identity", "unfinished", "atomic_write", "FORMAT", "DTYPES", "MANIFEST"]
