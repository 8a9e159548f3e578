"""ANN benchmark: FAISS index kinds on 1M x 256-d embedding-like vectors, against exact search and numpy.

Synthetic vectors that look like real embeddings (the numbers of an isotropic Gaussian would be far too
pessimistic for ANN, and well-separated blobs far too optimistic):

* a 64-d latent subspace of the 256-d space with a decaying spectrum (std of latent axis i ~ 1/sqrt(i+1)),
  because real embeddings use few effective dimensions;
* two-level clusters: 1000 "topics" with Zipf-like popularity, 32 "concepts" per topic (mean cosine of a
  concept to its topic ~0.85), points spread around their concept in the latent subspace, plus small full-rank
  noise;
* a shared mean direction (real embeddings are anisotropic: random pairs have cosine ~0.15, not 0);
* L2-normalised. At 1M this gives a nearest-neighbour cosine of ~0.85 and a 10th-neighbour cosine of ~0.8
  (reported in the JSON), close to what CLIP-style image embeddings of a large collection show.

Queries are fresh draws from the same mixture (not database points), as a text or image query lands near,
not on, the collection. Latency is single-query (nq = 1), FAISS on one thread, after a warm-up; recall@10 is
|ANN top-10 ∩ exact top-10| / 10 averaged over the queries.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from clipforge.index import ann
from benchmarks.env import environment


def synthetic_embeddings(n: int, d: int = 256, seed: int = 0, latent: int = 64, topics: int = 1000,
                         concepts_per_topic: int = 32, chunk: int = 200_000) -> np.ndarray:
    """(n, d) float32 unit vectors from a fixed "world" (same clusters for every seed); ``seed`` picks the points."""
    world = np.random.default_rng(1234)
    latent = min(latent, d)
    basis = np.linalg.qr(world.standard_normal((d, latent)))[0].T.astype(np.float32)       # (latent, d)
    spec = ((1 + np.arange(latent)) ** -0.5).astype(np.float32)
    spec /= np.sqrt((spec ** 2).sum())

    def latent_noise(r, m):
        return (r.standard_normal((m, latent)).astype(np.float32) * spec) @ basis

    mean = world.standard_normal(d).astype(np.float32)
    mean /= np.linalg.norm(mean)
    topic = latent_noise(world, topics)
    topic /= np.linalg.norm(topic, axis=1, keepdims=True)
    nc = topics * concepts_per_topic
    concept = np.repeat(topic, concepts_per_topic, 0) + 0.6 * latent_noise(world, nc)
    concept /= np.linalg.norm(concept, axis=1, keepdims=True)
    concept += 0.5 * mean
    weights = np.repeat(1.0 / (1 + np.arange(topics)) ** 0.8, concepts_per_topic) * world.uniform(0.2, 1.0, nc)
    weights /= weights.sum()
    r = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = concept[r.choice(nc, m, p=weights)] + 0.35 * latent_noise(r, m) \
            + 0.03 * r.standard_normal((m, d)).astype(np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"latency_p50_ms": float(np.percentile(ms, 50)), "latency_p99_ms": float(np.percentile(ms, 99)),
            "latency_mean_ms": float(ms.mean())}


def _single_query_latency(search, xq: np.ndarray, warmup: int = 50) -> tuple[dict, np.ndarray]:
    for i in range(min(warmup, len(xq))):
        search(xq[i:i + 1])
    times, ids = [], []
    for i in range(len(xq)):
        t0 = time.perf_counter()
        row = search(xq[i:i + 1])
        times.append(time.perf_counter() - t0)
        ids.append(row)
    return _percentiles(times), np.vstack(ids)


def _recall(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def run_ann(out: str | Path, n: int = 1_000_000, dim: int = 256, n_queries: int = 1000, k: int = 10,
            ef_values=(16, 32, 64, 128), nprobe_values=(8, 16, 32, 64), build_threads: int = 2,
            log=print) -> Path:
    import faiss
    t_start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    xb = synthetic_embeddings(n, dim, seed=0)
    xq = synthetic_embeddings(n_queries, dim, seed=1)
    log(f"generated {n} x {dim} vectors in {time.time() - t0:.1f} s")

    faiss.omp_set_num_threads(build_threads)
    t0 = time.time()
    gt_scores, truth = faiss.knn(xq, xb, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    t_gt = time.time() - t0
    stats = {"nn1_cosine_mean": float(gt_scores[:, 0].mean()), "nn10_cosine_mean": float(gt_scores[:, k - 1].mean()),
             "nn10_nn11_gap_mean": float((gt_scores[:, k - 1] - gt_scores[:, k]).mean()),
             "random_pair_cosine_mean": float(np.mean(np.sum(xb[:2000] * xb[2000:4000], 1)))}
    truth = truth[:, :k]
    log(f"exact top-{k} of {n_queries} queries (batched, {build_threads} threads): {t_gt:.1f} s; {stats}")

    # numpy brute force: one query = one matrix-vector product over the whole collection + a partial sort.
    def numpy_search(q):
        s = xb @ q[0]
        top = np.argpartition(-s, k)[:k]
        return top[np.argsort(-s[top])][None]
    sub = xq[: max(20, n_queries // 10)]
    lat, found = _single_query_latency(numpy_search, sub, warmup=3)
    t0 = time.time()
    for s in range(0, n_queries, 100):  # batched: a (100 x d) @ (d x n) product per step
        sc = xq[s:s + 100] @ xb.T
        np.argpartition(-sc, k, axis=1)[:, :k]
    batched = (time.time() - t0) / n_queries * 1e3
    numpy_row = {"method": "numpy-brute-force", "metrics": {**lat, "recall@10": _recall(found, truth[:len(sub)]),
                 "batched_ms_per_query": batched, "queries_timed": len(sub)},
                 "params": {"numpy_threads": "BLAS default", "batch_for_batched": 100}}
    log(f"numpy brute force: {numpy_row['metrics']}")

    faiss.omp_set_num_threads(1)
    lat, found = _single_query_latency(lambda q: faiss.knn(q, xb, k, metric=faiss.METRIC_INNER_PRODUCT)[1],
                                       xq[: max(20, n_queries // 10)], warmup=3)
    flat_row = {"method": "faiss-flat-exact", "metrics": {**lat, "recall@10": _recall(found, truth), "build_seconds": 0.0},
                "params": {"kind": "flat", "search_threads": 1}}
    log(f"faiss flat: {flat_row['metrics']}")

    # HNSW: the kind clipforge picks for this size (ann.choose), at several efSearch values.
    spec = ann.choose(n)
    hnsw_spec = spec if spec.kind == "hnsw" else ann.choose(n, "hnsw")
    faiss.omp_set_num_threads(build_threads)
    t0 = time.time()
    index = ann.build(xb, hnsw_spec)
    t_build = time.time() - t0
    log(f"hnsw {hnsw_spec.params} built in {t_build:.0f} s")
    faiss.omp_set_num_threads(1)
    hnsw_rows = []
    for ef in sorted(set(ef_values) | {hnsw_spec.params["efSearch"]}):
        index.hnsw.efSearch = ef
        lat, found = _single_query_latency(lambda q: index.search(q, k)[1], xq)
        row = {"method": f"hnsw-M{hnsw_spec.params['M']}-ef{ef}", "metrics": {**lat, "recall@10": _recall(found, truth),
               "build_seconds": t_build}, "params": {**hnsw_spec.params, "efSearch": ef, "search_threads": 1,
                                                     "build_threads": build_threads}}
        hnsw_rows.append(row)
        log(f"{row['method']}: {row['metrics']}")
    default_ef = hnsw_spec.params["efSearch"]
    del index

    ivf_spec = ann.choose(n, "ivf")
    faiss.omp_set_num_threads(build_threads)
    t0 = time.time()
    index = ann.build(xb, ivf_spec)
    t_build = time.time() - t0
    log(f"ivf {ivf_spec.params} built in {t_build:.0f} s")
    faiss.omp_set_num_threads(1)
    ivf_rows = []
    ivf = faiss.extract_index_ivf(index)
    for nprobe in nprobe_values:
        ivf.nprobe = nprobe
        lat, found = _single_query_latency(lambda q: index.search(q, k)[1], xq)
        row = {"method": f"ivf{ivf_spec.params['nlist']}-nprobe{nprobe}", "metrics": {**lat, "recall@10": _recall(found, truth),
               "build_seconds": t_build}, "params": {"nlist": ivf_spec.params["nlist"], "nprobe": nprobe,
                                                     "search_threads": 1, "build_threads": build_threads}}
        ivf_rows.append(row)
        log(f"{row['method']}: {row['metrics']}")
    del index

    # The clipforge default (what ann.choose picks at this size) is the first row, the other settings after it.
    rows = hnsw_rows + ivf_rows + [flat_row, numpy_row]
    if spec.kind == "hnsw":
        first = next(r for r in hnsw_rows if r["params"]["efSearch"] == default_ef)
    elif spec.kind == "ivf":
        first = min(ivf_rows, key=lambda r: abs(r["params"]["nprobe"] - spec.params["nprobe"]))
    else:
        first = flat_row
    results = [{**first, "method": f"clipforge-auto ({first['method']})"}] + [r for r in rows if r is not first]
    doc = {"suite": "ann", "task": "approximate_nearest_neighbour_search",
           "dataset": f"synthetic embedding-like vectors, {n} x {dim} (benchmarks.ann.synthetic_embeddings)",
           "protocol": {"n": n, "dim": dim, "queries": n_queries, "k": k, "metric": "inner product on unit vectors",
                        "latency": "single query (nq=1), FAISS search on 1 thread, after 50 warm-up queries",
                        "recall": "|top-10 ∩ exact top-10| / 10, mean over queries",
                        "exact": "faiss.knn over the whole collection",
                        "data": "64-d latent subspace with decaying spectrum; 1000 Zipf topics x 32 concepts; "
                                "shared mean direction; L2-normalised; queries are fresh draws",
                        "data_stats": stats, "exact_batched_seconds": t_gt},
           "results": results, "wall_seconds": time.time() - t_start, "env": environment()}
    path = out / "ann.json"
    path.write_text(json.dumps(doc, indent=2))
    return path
