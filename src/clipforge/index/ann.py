"""Which FAISS index for how many vectors, built and tuned in one place (the index and the ANN benchmark share it).

Vectors are L2-normalised embeddings, so inner product = cosine and every index uses METRIC_INNER_PRODUCT.

* ``flat``  exact search; the default below ``FLAT_MAX`` vectors, where a scan takes a few milliseconds.
* ``hnsw``  HNSW graph (M links per node): no training, cheap incremental adds, the best latency at a given
  recall on one core; the default from ``FLAT_MAX`` up to ``IVF_MIN`` vectors.
* ``ivf``   inverted lists over k-means cells (``nlist`` cells, ``nprobe`` scanned per query): the cheapest to
  build at many millions of vectors, where building an HNSW graph on two cores takes too long.

``efSearch`` / ``nprobe`` are search-time settings: they are stored with the index and can be changed on load.
The defaults come from ``clipforge bench ann`` (benchmarks/results/ann.json).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from clipforge.errors import ClipforgeError
from clipforge.util.extras import require

FLAT_MAX = 50_000
IVF_MIN = 5_000_000
KINDS = ("auto", "flat", "hnsw", "ivf")
DEFAULTS = {"flat": {}, "hnsw": {"M": 32, "efConstruction": 80, "efSearch": 64},
            "ivf": {"nlist": None, "nprobe": 32}}
SEARCH_PARAMS = {"hnsw": ("efSearch",), "ivf": ("nprobe",), "flat": ()}


def _faiss():
    return require("faiss", "serve", "the image index (FAISS)")


@dataclass
class AnnSpec:
    """An index kind and its parameters (build-time and search-time)."""
    kind: str
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "params": dict(self.params)}


def ivf_nlist(n: int) -> int:
    """~4 sqrt(n) cells, with at least ~39 training points per cell (FAISS warns below that)."""
    return int(max(1, min(4 * math.sqrt(max(n, 1)), n // 39 or 1, 65536)))


def choose(n: int, kind: str = "auto", params: dict | None = None) -> AnnSpec:
    """The spec for ``n`` vectors: ``kind='auto'`` picks by size; ``params`` override the defaults."""
    if kind not in KINDS:
        raise ClipforgeError(f"index kind must be one of {list(KINDS)}, not '{kind}'")
    if kind == "auto":
        kind = "flat" if n < FLAT_MAX else "hnsw" if n < IVF_MIN else "ivf"
    p = dict(DEFAULTS[kind])
    unknown = set(params or {}) - set(p)
    if unknown:
        raise ClipforgeError(f"unknown parameter(s) {sorted(unknown)} for a '{kind}' index; "
                             f"it takes {sorted(p) or 'none'}")
    p.update({k: v for k, v in (params or {}).items() if v is not None})
    if kind == "ivf" and not p.get("nlist"):
        p["nlist"] = ivf_nlist(n)
    for k, v in p.items():
        if not isinstance(v, int) or v < 1:
            raise ClipforgeError(f"index parameter '{k}' must be a positive integer, not {v!r}")
    return AnnSpec(kind, p)


def build(vectors: np.ndarray, spec: AnnSpec, seed: int = 0):
    """A FAISS index over ``vectors`` (float32, L2-normalised rows), ids = row positions."""
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    p = spec.params
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, p["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p["efConstruction"]
    elif spec.kind == "ivf":
        nlist = min(p["nlist"], max(1, n))
        coarse = f"IVF{nlist}" if nlist <= 16384 else f"IVF{nlist}_HNSW32"
        index = faiss.index_factory(d, f"{coarse},Flat", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = x if n <= 64 * nlist else x[np.sort(rng.choice(n, 64 * nlist, replace=False))]
        cp = faiss.extract_index_ivf(index).cp
        cp.seed, cp.niter = seed, 10   # 10 k-means rounds: the cells barely move after that
        index.train(sample)
    else:  # pragma: no cover - choose() validates
        raise ClipforgeError(f"unknown index kind '{spec.kind}'")
    if n:
        index.add(x)
    configure(index, spec)
    return index


def configure(index, spec: AnnSpec) -> None:
    """Apply the search-time parameters of ``spec`` to a built or loaded index."""
    faiss = _faiss()
    if spec.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = int(spec.params["efSearch"])
    elif spec.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(spec.params["nprobe"])


def reconstruct_all(index) -> np.ndarray:
    """Every stored vector in id order (to rebuild as another kind, e.g. when a flat index outgrows FLAT_MAX)."""
    faiss = _faiss()
    n = index.ntotal
    if n == 0:
        return np.zeros((0, index.d), np.float32)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        ivf.make_direct_map()
    return index.reconstruct_n(0, n)


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (nq, k); ids of -1 (fewer than k vectors) are left to the caller to drop."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    return index.search(q, int(k))


def write(index, path) -> None:
    _faiss().write_index(index, str(path))


def read(path):
    return _faiss().read_index(str(path))
