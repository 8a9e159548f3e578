"""Load benchmark of the web service: text search over a 10k-image index, on loopback, bounded in time.

The index holds synthetic vectors (bench.ann.synthetic_embeddings at the model's width) so no 10k images have to
be embedded first, but every query goes through the real text tower (MiniLM) and head: the server is the one
``clipforge serve`` runs, started as a subprocess. Each request carries a different query (a pool of generated
short queries, never repeated within a run), so the server's query-embedding cache never hits: the numbers are
those of fresh queries.

Load generator: wrk (Debian package) when it is installed, closed-loop with C connections for a fixed time;
else a small asyncio HTTP/1.1 keep-alive client doing the same. Both run on the same 2 cores as the server, so
the generator's own CPU use is inside the numbers.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.ann import synthetic_embeddings
from benchmarks.env import environment

ADJ = ["red", "blue", "green", "yellow", "black", "white", "small", "large", "old", "young", "happy", "sleepy",
       "wooden", "shiny", "striped", "spotted", "broken", "wet", "bright", "dark"]
NOUNS = ["cat", "dog", "car", "bicycle", "house", "tree", "flower", "bird", "horse", "boat", "chair", "table",
         "cup", "shoe", "hat", "guitar", "clock", "lamp", "book", "apple", "banana", "pizza", "train", "plane",
         "bridge", "mountain", "river", "beach", "street", "kitchen", "child", "woman", "man", "robot", "teddy bear",
         "umbrella", "kite", "sandwich", "laptop", "phone"]
PLACES = ["", "on a table", "in the snow", "at night", "on the beach", "in a field", "on the street", "in a room",
          "under a tree", "in the rain", "next to a window", "on grass"]


def query_pool(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct short queries such as 'a spotted dog in the snow' (2-8 words, like search-box queries)."""
    combos = [" ".join(w for w in ("a", a, b, p) if w) for a, b, p in itertools.product(ADJ, NOUNS, PLACES)]
    random.Random(seed).shuffle(combos)
    if n > len(combos):
        raise ValueError(f"at most {len(combos)} distinct queries")
    return combos[:n]


def _onnx_available() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def make_bench_index(root: Path, images: int, log=print) -> Path:
    """A model on the packaged towers (heads untrained: only the text path is timed) and a synthetic index."""
    from clipforge.config import HeadConfig
    from clipforge.index import ImageIndex
    from clipforge.model.dual_encoder import DualEncoder
    from clipforge.towers import build_tower
    image = build_tower("pkg:efficientnet-lite0", "image", image_size=112).lock()
    text = build_tower("pkg:all-MiniLM-L6-v2", "text").lock()
    model = DualEncoder(image, text, HeadConfig(text_head=False, embed_dim=text.dim), tower_opts={"image_size": 112})
    model.save_pretrained(root / "model")
    x = synthetic_embeddings(images, text.dim, seed=2)
    records = [{"path": f"synthetic/{i:06d}.jpg", "caption": f"synthetic image {i}"} for i in range(images)]
    ImageIndex.from_vectors(root / "index", x, records, model=model, model_dir=root / "model")
    log(f"index of {images} synthetic vectors at {root / 'index'}")
    return root / "index"


WRK_LUA = r"""
local queries = {}
for line in io.lines("%(queries)s") do queries[#queries + 1] = line end
local tid_next = 0
function setup(thread)
  thread:set("tid", tid_next)
  tid_next = tid_next + 1
end
local counter = -1
function request()
  if counter < 0 then counter = tid end
  local q = queries[(counter %% #queries) + 1]
  counter = counter + %(threads)d
  return wrk.format("GET", "/api/search/text?k=10&q=" .. q)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%d, "duration_us": %%d, "errors": {"connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d}, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "max_us": %%d, ' ..
    '"mean_us": %%f}\n', summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def _wrk(port: int, queries_file: Path, seconds: int, connections: int, threads: int = 2) -> dict:
    script = queries_file.with_suffix(".lua")
    script.write_text(WRK_LUA % {"queries": str(queries_file), "threads": threads})
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script),
           f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    r = json.loads(line[len("WRKJSON "):])
    errors = sum(r["errors"].values())
    secs = r["duration_us"] / 1e6
    return {"requests_per_second": r["requests"] / secs, "latency_p50_ms": r["p50_us"] / 1e3,
            "latency_p90_ms": r["p90_us"] / 1e3, "latency_p99_ms": r["p99_us"] / 1e3, "latency_max_ms": r["max_us"] / 1e3,
            "latency_mean_ms": r["mean_us"] / 1e3, "requests": r["requests"], "errors": errors,
            "error_kinds": r["errors"], "seconds": secs}


async def _asyncio_load(port: int, paths: list[str], seconds: float, connections: int) -> dict:
    """Closed-loop HTTP/1.1 keep-alive load: ``connections`` clients, each sending its next request on reply."""
    lat, errors, it = [], 0, iter(paths)
    deadline = time.perf_counter() + seconds

    async def client():
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                path = next(it)
                t0 = time.perf_counter()
                writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                lat.append(time.perf_counter() - t0)
                errors += status != 200
        except Exception:  # noqa: BLE001 - a dropped connection counts as one error
            errors += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    secs = time.perf_counter() - t0
    ms = np.asarray(lat) * 1e3
    return {"requests_per_second": len(lat) / secs, "latency_p50_ms": float(np.percentile(ms, 50)),
            "latency_p90_ms": float(np.percentile(ms, 90)), "latency_p99_ms": float(np.percentile(ms, 99)),
            "latency_max_ms": float(ms.max()), "latency_mean_ms": float(ms.mean()), "requests": len(lat),
            "errors": errors, "seconds": secs}


class _Server:
    def __init__(self, index: Path, port: int, extra: list[str]):
        cmd = [sys.executable, "-c", "from clipforge.cli import app; app()", "serve", str(index), "--port", str(port),
               "--torch-threads", "1", *extra]
        self.port = port
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                self.health = _get(f"http://127.0.0.1:{port}/api/health", 1.0)
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not start in 180 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_serve(out: str | Path, images: int = 10_000, seconds: int = 20, connections: int = 8, log=print,
              client: str = "auto") -> Path:
    t_start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    use_wrk = client == "wrk" or (client == "auto" and shutil.which("wrk") is not None)
    with tempfile.TemporaryDirectory(prefix="clipforge-bench-serve-") as tmp:
        tmp = Path(tmp)
        index = make_bench_index(tmp, images, log)
        pool = query_pool(len(ADJ) * len(NOUNS) * len(PLACES), seed=0)
        onnx = ["--text-runtime", "onnx", "--text-workers", "2"]
        configs = [("clipforge-serve (batched, ONNX Runtime, 2 text workers)", onnx, connections),
                   ("clipforge-serve (same, twice the connections)", onnx, 2 * connections),
                   ("clipforge-serve (batched, ONNX Runtime, 1 text worker)", ["--text-runtime", "onnx", "--text-workers", "1"],
                    connections),
                   ("clipforge-serve (batched, text tower on torch, 2 text workers)",
                    ["--text-runtime", "torch", "--text-workers", "2"], connections),
                   ("clipforge-serve (no batching: max_batch=1, ONNX Runtime, 2 text workers)", [*onnx, "--max-batch", "1"],
                    connections)]
        if not _onnx_available():
            log("onnxruntime/onnx not installed: the ONNX rows are left out")
            configs = [(m.replace("ONNX Runtime", "torch"), ["--text-runtime", "torch", *a[2:]], c) for m, a, c in configs
                       if "torch" not in m]
        results, offset = [], 0
        for method, extra, conns in configs:
            server = _Server(index, _free_port(), ["--query-cache", "0", *extra])
            try:
                # Warm-up (not timed): first forward passes, allocator, tokenizer caches.
                warm = pool[-200:]
                for q in warm[:20]:
                    _get(f"http://127.0.0.1:{server.port}/api/search/text?q={urllib.parse.quote(q)}&k=10")
                queries = pool[offset:]   # fresh queries for every run
                paths = [f"/api/search/text?k=10&q={urllib.parse.quote(q)}" for q in queries]
                if use_wrk:
                    qfile = tmp / f"queries-{len(results)}.txt"
                    qfile.write_text("\n".join(urllib.parse.quote(q) for q in queries))
                    metrics = _wrk(server.port, qfile, seconds, conns)
                else:
                    metrics = asyncio.run(_asyncio_load(server.port, paths, seconds, conns))
                offset = (offset + metrics["requests"] + 2 * conns) % (len(pool) - 1000)
                health = _get(f"http://127.0.0.1:{server.port}/api/health")
                tb = health["text_batches"]
                metrics["text_runtime"] = health["text_runtime"]
                metrics["mean_batch_size"] = tb["queries"] / max(1, tb["batches"])
                check = _get(f"http://127.0.0.1:{server.port}/api/search/text?q=a+red+cat&k=10")
                assert len(check["results"]) == 10
            finally:
                server.stop()
            row = {"method": method, "metrics": metrics,
                   "params": {"connections": conns, "client": "wrk" if use_wrk else "asyncio", "seconds": seconds,
                              "k": 10, "torch_threads": 1, "query_cache": 0, "server_args": extra}}
            log(f"{method}: {json.dumps(metrics)}")
            results.append(row)
    doc = {"suite": "serve", "task": "text_to_image_search_http_load",
           "dataset": f"{images} synthetic embedding-like vectors (flat index), real text tower per query",
           "model": "pkg:efficientnet-lite0 + pkg:all-MiniLM-L6-v2 (text path: MiniLM + head)",
           "protocol": {"endpoint": "GET /api/search/text?q=...&k=10", "loopback": "127.0.0.1",
                        "queries": "a distinct generated query per request (query cache off)",
                        "load": "closed loop, fixed duration per run, after a warm-up",
                        "server": "clipforge serve: uvicorn (h11), 1 process, torch/FAISS 1 thread, text queries batched, 2 text workers",
                        "machine": "server and load generator share the same CPU cores"},
           "results": results, "wall_seconds": time.time() - t_start, "env": environment()}
    path = out / "serve.json"
    path.write_text(json.dumps(doc, indent=2))
    return path
