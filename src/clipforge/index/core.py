"""ImageIndex: image embeddings in FAISS, their metadata in SQLite, on disk as versions swapped atomically.

Layout of an index directory::

    INDEX/CURRENT              name of the live version (replaced atomically with os.replace)
    INDEX/v-<time>/vectors.faiss, meta.sqlite, manifest.json
    INDEX/.lock                held while a build or an add writes

A build or an add writes a complete new version under a temporary name, renames it, and only then points
CURRENT at it, so a crash at any moment leaves the previous version live and loadable (and the next build
sweeps the half-written folder away); an open ImageIndex holds its version (a shared lock) until ``close``, so
no writer deletes it while it is read: versions.py. A long-lived reader follows CURRENT with live.py. Embeddings of the image tower go through the embedding cache
in chunks, so a crashed build that is run again recomputes only the chunks it had not finished: embedding.py.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
import uuid
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipforge.embed.cache import EmbeddingCache
from clipforge.data.images import load_image
from clipforge.errors import ClipforgeError
from clipforge.util.testhooks import pause_point
from clipforge.index import ann
from clipforge.index.embedding import digest_items, embed_items
from clipforge.index.sources import list_source
from clipforge.index.store import MetaStore, Record
from clipforge.index.versions import CURRENT, check_target, collect, current_dir, hold, publish, release, sweep_stale, write_lock

FORMAT = "clipforge-index/1"
MANIFEST, VECTORS, META = "manifest.json", "vectors.faiss", "meta.sqlite"


@dataclass
class Hit:
    id: int
    score: float
    path: str
    caption: str | None
    width: int | None
    height: int | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BuildReport:
    """What a build or an add did; ``skipped`` holds (file or CSV row, reason) for everything left out."""
    index: str
    added: int
    total: int
    kind: str
    params: dict
    skipped: list[tuple[str, str]] = field(default_factory=list)
    already_indexed: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        s = f"{self.added} images added, {self.total} in the index ({self.kind} {self.params})"
        if self.already_indexed:
            s += f", {self.already_indexed} already indexed"
        if self.skipped:
            s += f", {len(self.skipped)} skipped"
        return s + f", {self.seconds:.1f} s"


def model_fingerprint(model) -> str:
    """Config + head weights (+ tower weights if trained): equal for a model and its saved-and-reloaded copy."""
    cfg = model.config_dict()
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        if (k.startswith("image_tower.") and not cfg["image_tower_trained"]) or \
                (k.startswith("text_tower.") and not cfg["text_tower_trained"]):
            continue
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def model_info(model, model_dir: str | Path | None) -> dict:
    return {"dir": str(Path(model_dir).resolve()) if model_dir else None, "fingerprint": model_fingerprint(model),
            "image_tower": model.image_tower.tower_id, "text_tower": model.text_tower.tower_id,
            "cosine": type(model.similarity).__name__ == "CosineSimilarity"}


def _load_model(model):
    """A DualEncoder, or a saved model directory -> (model, its directory or None)."""
    if model is None or hasattr(model, "encode_image"):
        return model, getattr(model, "source_dir", None)
    from clipforge.model.dual_encoder import DualEncoder
    return DualEncoder.from_pretrained(model), Path(model)


# -- the index ---------------------------------------------------------------------------------------------

class ImageIndex:
    """Search an image collection by text or by image. Build with ``ImageIndex.build``, open with ``load``."""

    def __init__(self, root: Path, version: Path, manifest: dict, index, store: MetaStore, model=None,
                 lock: int | None = None):
        self.root, self.version, self.manifest = root, version, manifest
        self.ann, self.store, self._model = index, store, model
        self.spec = ann.AnnSpec(manifest["ann"]["kind"], dict(manifest["ann"]["params"]))
        self.search_params: dict | None = None
        # The version's reader lock goes with this object: close() lets it go, and so does garbage collection
        # (a server that switched to a newer version drops the old one when its last request is done).
        self._lock = lock
        self._release = weakref.finalize(self, release, lock)

    def close(self) -> None:
        """Let go of this version (its SQLite connection of this thread and its reader lock), so a writer can
        remove it once it is no longer live; searching afterwards is an error."""
        self.store.close()
        self._release()
        collect(self.root)

    def __enter__(self) -> "ImageIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- opening ------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, model=None, search_params: dict | None = None) -> "ImageIndex":
        """Open the live version. ``model``: a DualEncoder or model dir (default: the one the index was built
        with, loaded on first use); ``search_params``: e.g. ``{"efSearch": 128}`` or ``{"nprobe": 64}``."""
        root = Path(path)
        for _ in range(20):  # a writer may collect the version between reading CURRENT and locking it: read again
            version = current_dir(root)
            if version is None:
                raise ClipforgeError(f"'{root}' is not a clipforge index (no {CURRENT}); build one with 'clipforge index build'")
            lock = hold(version)
            if lock is not None:
                break
        else:  # pragma: no cover - twenty versions published while this one opened
            raise ClipforgeError(f"index '{root}' changes faster than it can be opened; try again")
        try:
            manifest = json.loads((version / MANIFEST).read_text())
            if manifest.get("format") != FORMAT:
                raise ClipforgeError(f"index '{root}' has format {manifest.get('format')!r}; this clipforge reads {FORMAT}")
            index = ann.read(version / VECTORS)
        except BaseException:
            release(lock)
            raise
        self = cls(root, version, manifest, index, MetaStore(version / META, readonly=True), lock=lock)
        self.search_params = dict(search_params) if search_params else None
        if search_params:
            allowed = ann.SEARCH_PARAMS[self.spec.kind]
            bad = sorted(set(search_params) - set(allowed))
            if bad:
                raise ClipforgeError(f"search parameter(s) {bad} do not apply to a '{self.spec.kind}' index "
                                     f"(it takes {list(allowed) or 'none'})")
            self.spec.params.update({k: int(v) for k, v in search_params.items() if v is not None})
        ann.configure(index, self.spec)
        if model is not None:
            self.use_model(model)
        return self

    def use_model(self, model) -> None:
        m, _ = _load_model(model)
        want = self.manifest["model"]
        with torch.no_grad():
            width = m.embed_text_features(torch.zeros(1, m.text_tower.dim)).shape[-1]
        if self.dim and width != self.dim:
            raise ClipforgeError(f"this model's embeddings do not have the index's width {self.dim}")
        if want.get("fingerprint") and model_fingerprint(m) != want["fingerprint"]:
            raise ClipforgeError(f"index '{self.root}' was built with another model ({want.get('dir') or want['fingerprint']}); "
                                 "its vectors would not match this model's: rebuild the index with this model")
        self._model = m

    @property
    def model(self):
        if self._model is None:
            d = self.manifest["model"].get("dir")
            if not d:
                raise ClipforgeError(f"index '{self.root}' does not name its model; pass --model DIR")
            from clipforge.model.dual_encoder import DualEncoder
            self._model = DualEncoder.from_pretrained(d)
        return self._model

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return int(self.ann.ntotal)

    # -- writing ------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, source, model, out: str | Path, kind: str = "auto", params: dict | None = None,
              cache_dir: str | Path | None = None, batch_size: int = 64, workers: int = 2,
              progress: bool = True) -> "ImageIndex":
        """Embed every image of ``source`` (folder / caption CSV / file) and write a new index at ``out``.

        An existing index at ``out`` is replaced only once the new one is complete. Broken images are skipped
        and listed in ``index.report.skipped``.
        """
        t0 = time.time()
        m, model_dir = _load_model(model)
        if type(m.similarity).__name__ != "CosineSimilarity":
            raise ClipforgeError("an image index needs a model with cosine similarity (inner-product search); "
                                 "this one scores pairs with a Siamese network")
        items, problems = list_source(source)
        root = Path(out)
        check_target(root)
        with write_lock(root):
            sweep_stale(root)
            todo, skipped, _ = digest_items(items, {}, workers)
            vecs, recs, bad = embed_items(m, todo, EmbeddingCache(cache_dir), batch_size, workers, progress)
            spec = ann.choose(len(recs), kind, params)
            info = model_info(m, model_dir)
            cls._write_new(root, vecs, recs, problems + skipped + bad, spec, info, requested=kind,
                           sources=[str(Path(source).resolve())])
        self = cls.load(root, model=m)
        self.report = BuildReport(str(root), len(recs), len(self), spec.kind, spec.params,
                                  problems + skipped + bad, 0, time.time() - t0)
        return self

    @classmethod
    def from_vectors(cls, out: str | Path, vectors: np.ndarray, records: list[dict] | None = None,
                     kind: str = "auto", params: dict | None = None, model=None, model_dir=None) -> "ImageIndex":
        """An index over precomputed embeddings (rows L2-normalised), e.g. from another pipeline or a benchmark.

        ``records[i]`` may give ``path``, ``caption``, ``width``, ``height``, ``bytes``, ``sha256`` of row i.
        """
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        recs = []
        for i in range(len(x)):
            r = (records[i] if records else {}) or {}
            recs.append(Record(-1, str(r.get("path", f"vector-{i}")), r.get("caption"), r.get("width"), r.get("height"),
                               r.get("bytes"), str(r.get("sha256") or hashlib.sha256(x[i].tobytes()).hexdigest())))
        m, mdir = _load_model(model) if model is not None else (None, model_dir)
        info = model_info(m, mdir or model_dir) if m is not None else {"dir": str(model_dir) if model_dir else None,
                                                                         "fingerprint": None}
        root = Path(out)
        check_target(root)
        spec = ann.choose(len(x), kind, params)
        with write_lock(root):
            sweep_stale(root)
            cls._write_new(root, x, recs, [], spec, info, requested=kind, sources=["vectors"])
        return cls.load(root, model=m)

    @staticmethod
    def _write_new(root, vecs, recs, skipped, spec, info, requested, sources, base: Path | None = None,
                   index=None, first_id: int = 0, created: float | None = None):
        tmp = root / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            if base is not None:
                shutil.copy2(base / META, tmp / META)
            for i, r in enumerate(recs):
                r.id = first_id + i
            MetaStore(tmp / META, readonly=False).insert(recs, skipped)
            if index is None:
                index = ann.build(vecs, spec)
            ann.write(index, tmp / VECTORS)
            pause_point("index-write")  # test hook (tests/test_crash.py): a new version half written, not published
            manifest = {"format": FORMAT, "dim": int(index.d), "count": int(index.ntotal),
                        "ann": {**spec.to_dict(), "requested": requested}, "model": info, "sources": sources,
                        "created": created or time.time(), "updated": time.time()}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            return publish(root, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def add(self, source, kind: str | None = None, cache_dir: str | Path | None = None, batch_size: int = 64,
            workers: int = 2, progress: bool = True) -> BuildReport:
        """Embed the images of ``source`` that are not in the index yet (by content hash) and publish a new version.

        An index built with ``kind='auto'`` is rebuilt as the kind its new size calls for (flat -> hnsw -> ivf).
        """
        t0 = time.time()
        m = self.model
        items, problems = list_source(source)
        with write_lock(self.root):
            sweep_stale(self.root)
            live = current_dir(self.root)
            if live != self.version:  # someone else published meanwhile: continue from theirs
                fresh = ImageIndex.load(self.root, search_params=None)
                self._swap(fresh)
            hashes_todo, skipped, _ = digest_items(items, {}, workers)
            known = self.store.by_hash([sha for _, sha, _ in hashes_todo])
            todo = [t for t in hashes_todo if t[1] not in known]
            already = len(hashes_todo) - len(todo)
            vecs, recs, bad = embed_items(m, todo, EmbeddingCache(cache_dir), batch_size, workers, progress)
            requested = kind or self.manifest["ann"].get("requested", self.spec.kind)
            n_total = len(self) + len(recs)
            want = ann.choose(n_total, requested, None if requested == "auto" else
                              {k: v for k, v in self.spec.params.items() if requested == self.spec.kind})
            if want.kind == self.spec.kind:
                index, spec = ann.read(self.version / VECTORS), self.spec
                if len(recs):
                    index.add(np.ascontiguousarray(vecs, np.float32))
                ann.configure(index, spec)
            else:  # outgrew its kind: rebuild from the stored vectors plus the new ones
                old = ann.reconstruct_all(self.ann)
                index, spec = ann.build(np.concatenate([old, vecs]) if len(recs) else old, want), want
            self._write_new(self.root, vecs, recs, problems + skipped + bad, spec, self.manifest["model"], requested,
                            self.manifest.get("sources", []) + [str(Path(source).resolve())], base=self.version,
                            index=index, first_id=len(self), created=self.manifest.get("created"))
        self._swap(ImageIndex.load(self.root))
        collect(self.root)  # the version this object held until now, unless another reader still holds it
        return BuildReport(str(self.root), len(recs), len(self), spec.kind, spec.params,
                           problems + skipped + bad, already, time.time() - t0)

    def _swap(self, fresh: "ImageIndex") -> None:
        """Become ``fresh`` (a newer version), letting go of the version held until now."""
        self.store.close()
        self._release()
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k not in ("_model", "_release")})
        fresh._release.detach()
        self._release = weakref.finalize(self, release, self._lock)

    # -- reading ------------------------------------------------------------------------------------------
    def records(self, ids) -> dict[int, Record]:
        return self.store.get(ids)

    def record(self, id_: int) -> Record | None:
        return self.store.get([id_]).get(int(id_))

    def skipped(self) -> list[tuple[str, str]]:
        """Every (file or CSV row, reason) left out by the builds and adds of this index."""
        return self.store.skipped()

    def search_vectors(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Nearest images of each query embedding, best first (score = cosine similarity)."""
        q = np.atleast_2d(np.asarray(queries, np.float32))
        if len(self) == 0:
            n = len(self.skipped())
            raise ClipforgeError(f"index '{self.root}' holds no images yet" + (f" (all {n} files were skipped: "
                                 f"'clipforge index info {self.root} --skipped' says why)" if n else "")
                                 + f"; add some with 'clipforge index add {self.root} FOLDER'")
        if q.shape[1] != self.dim:
            raise ClipforgeError(f"query vectors have width {q.shape[1]}, the index {self.dim}")
        k = max(1, min(int(k), len(self) or 1))
        scores, ids = ann.search(self.ann, q, k)
        recs = self.store.get({int(i) for i in ids.ravel() if i >= 0})
        out = []
        for srow, irow in zip(scores, ids):
            hits = []
            for s, i in zip(srow, irow):
                r = recs.get(int(i))
                if r is not None:
                    hits.append(Hit(r.id, float(s), r.path, r.caption, r.width, r.height))
            out.append(hits)
        return out

    def search_text(self, query: str | list[str], k: int = 10):
        """Text -> images. A string gives a list of hits; a list of strings gives one list per query."""
        single = isinstance(query, str)
        q = self.model.encode_text([query] if single else list(query))
        res = self.search_vectors(q, k)
        return res[0] if single else res

    def search_image(self, image, k: int = 10) -> list[Hit]:
        """Image (PIL image, file path or bytes) -> similar images."""
        img = as_image(image)
        return self.search_vectors(self.model.encode_image([img]), k)[0]


def as_image(image) -> Image.Image:
    """A PIL image, a path or raw bytes -> RGB PIL image; anything undecodable raises ClipforgeError."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    src = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image
    img, reason = load_image(src)
    if img is None:
        raise ClipforgeError(f"cannot use image {image if not isinstance(image, (bytes, bytearray)) else '<bytes>'}: {reason}")
    return img
