"""``clipforge bench embed``: image embedding throughput, the naive eager loop against clipforge's pipeline.

One run, the same images (Tux Paint stamps, or generated JPEGs when the stamps are not installed), the same
tower (EfficientNet-Lite0 at 224 px), the same decoder (``load_image``: alpha composited on white) and the same
resize, so the features agree to float noise (checked, and written to the JSON). Each method runs in its own
fresh Python process, so its peak RSS is its own:

* ``naive-eager-b1`` / ``naive-eager-b64``: the loop a user writes: open and decode one image after another,
  resize, normalise (NCHW), ``torch.no_grad()``, the model's eager forward, one image or 64 images per call,
  default thread settings;
* ``clipforge``: ``cache.embed_images``: decoding and resizing in a thread pool that works a batch ahead of the
  model, the backend chosen for this machine (fast_embed.py: ONNX Runtime / BatchNorm-folded channels_last /
  eager) with its threads set, ``inference_mode``.

A separate row embeds all 70,000 Fashion-MNIST images (train + test) through ``embed_images`` at a small
image size to show that memory stays flat: the images go through the model a batch at a time, and no
full-resolution copy of the whole set exists at any moment (the JSON gives what one would weigh).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.env import environment

TOWER = "pkg:efficientnet-lite0"


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def benchmark_images(n: int, workdir: Path) -> tuple[list[str], str]:
    """``n`` Tux Paint stamps (sorted, mirrors skipped), or generated JPEG photos-alikes when they are missing."""
    from clipforge.data.tux_paint import STAMPS_DIR
    stamps = sorted(str(p) for p in STAMPS_DIR.rglob("*.png") if "_mirror" not in p.stem) if STAMPS_DIR.is_dir() else []
    if len(stamps) >= n:
        return stamps[:n], f"Tux Paint stamps ({STAMPS_DIR}), first {n} PNGs in sorted order, mirrors skipped"
    from PIL import Image
    rng = np.random.RandomState(0)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = rng.randint(200, 640, 2)
        base = rng.randint(0, 255, (8, 8, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((int(w), int(h)), Image.BICUBIC)
        p = workdir / f"gen-{i:04d}.jpg"
        img.save(p, "JPEG", quality=90)
        paths.append(str(p))
    return paths, f"{n} generated JPEGs (200-640 px smooth colour fields; Tux Paint stamps not installed)"


# -- the methods, each run in a child process ----------------------------------------------------------------

def _naive(paths: list[str], batch: int, size: int) -> dict:
    """What a user writes with torch and PIL: decode one by one, NCHW, eager forward under no_grad."""
    import torch

    from clipforge.data.images import load_image
    from clipforge.towers import build_tower
    tower = build_tower(TOWER, "image", image_size=size)
    model = tower.net.to(memory_format=torch.contiguous_format).eval()    # the EfficientNet itself, as published
    mean = torch.tensor(tower.pre.mean).view(3, 1, 1)
    std = torch.tensor(tower.pre.std).view(3, 1, 1)
    with torch.no_grad():                       # one warm-up forward (not timed), as clipforge's set-up has
        model.extract_features(torch.zeros(1, 3, size, size)).mean((2, 3))
    rss0 = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    feats = []
    with torch.no_grad():
        for s in range(0, len(paths), batch):
            xs = []
            for p in paths[s:s + batch]:
                img, _ = load_image(p)
                a = np.asarray(img.resize((size, size)), dtype=np.float32) / 255.0
                xs.append((torch.from_numpy(a).permute(2, 0, 1) - mean) / std)
            feats.append(model.extract_features(torch.stack(xs)).mean((2, 3)).numpy())
    wall = time.perf_counter() - t0
    return {"features": np.concatenate(feats), "seconds": wall, "cpu_seconds": time.process_time() - c0,
            "rss_before_mb": rss0, "setup_seconds": 0.0,
            "params": {"batch_size": batch, "torch_threads": torch.get_num_threads(), "decode_threads": 0,
                       "backend": "torch eager (NCHW, no_grad)"}}


def _clipforge(paths: list[str], batch: int, size: int, workers: int) -> dict:
    import torch

    from clipforge.embed.cache import embed_images
    from clipforge.embed.fast import fast_encoder
    from clipforge.towers import build_tower
    tower = build_tower(TOWER, "image", image_size=size).lock()
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    enc = fast_encoder(tower)                   # once per machine: timing candidates (cached); per process: a session
    setup = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    emb = embed_images(tower, paths, batch_size=batch, workers=workers, progress=False)
    wall = time.perf_counter() - t0
    return {"features": emb.features, "seconds": wall, "cpu_seconds": time.process_time() - c0,
            "rss_before_mb": rss0, "setup_seconds": setup,
            "params": {"batch_size": batch, "torch_threads": torch.get_num_threads(), "decode_threads": workers,
                       "backend": f"{enc.backend} (micro-batch {enc.micro_batch}, {enc.threads} threads)" if enc else "plain",
                       "backend_timings_img_per_s": enc.timings if enc else {}}}


def _fashion_mnist(size: int, batch: int) -> dict:
    import torch

    from clipforge.embed.cache import embed_images
    from clipforge.data.fashion_mnist import load_fashion_mnist
    from clipforge.embed.fast import fast_encoder
    from clipforge.towers import build_tower
    parts = [load_fashion_mnist("train"), load_fashion_mnist("test")]
    tower = build_tower(TOWER, "image", image_size=size, invert=True).lock()
    enc = fast_encoder(tower)
    rss0 = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    n, shapes = 0, []
    for ds in parts:
        emb = embed_images(tower, ds.images, batch_size=batch, progress=False)
        n += len(emb.features)
        shapes.append(list(emb.features.shape))
    wall = time.perf_counter() - t0
    return {"n": n, "seconds": wall, "cpu_seconds": time.process_time() - c0, "rss_before_mb": rss0,
            "setup_seconds": 0.0, "feature_shapes": shapes,
            "params": {"batch_size": batch, "image_size": size, "torch_threads": torch.get_num_threads(),
                       "backend": f"{enc.backend} (micro-batch {enc.micro_batch})" if enc else "plain"}}


def _tune(size: int) -> dict:
    """Once per machine: time the candidate backends (fast_embed.py) and save the choice for the runs after it."""
    import torch

    from clipforge.embed.fast import fast_encoder
    from clipforge.towers import build_tower
    tower = build_tower(TOWER, "image", image_size=size).lock()
    t0 = time.perf_counter()
    enc = fast_encoder(tower)
    return {"seconds": time.perf_counter() - t0, "backend": enc.backend if enc else "plain",
            "micro_batch": enc.micro_batch if enc else None, "timings_img_per_s": enc.timings if enc else {},
            "threads": torch.get_num_threads()}


def _child(spec: dict) -> None:
    """Entry point of a child process: run one method, write its numbers (and features) under ``spec['out']``."""
    method = spec["method"]
    if method == "tune":
        r = _tune(spec["size"])
    elif method == "naive":
        r = _naive(spec["paths"], spec["batch"], spec["size"])
    elif method == "clipforge":
        r = _clipforge(spec["paths"], spec["batch"], spec["size"], spec["workers"])
    else:
        r = _fashion_mnist(spec["size"], spec["batch"])
    feats = r.pop("features", None)
    if feats is not None:
        np.save(Path(spec["out"]) / "features.npy", feats)
        r["n"] = int(len(feats))
    r["peak_rss_mb"] = _peak_rss_mb()
    (Path(spec["out"]) / "result.json").write_text(json.dumps(r))


def _run_child(spec: dict, workdir: Path, log) -> tuple[dict, np.ndarray | None]:
    out = Path(tempfile.mkdtemp(dir=workdir, prefix=spec["method"] + "-"))
    spec = {**spec, "out": str(out)}
    (out / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.embed", str(out / "spec.json")], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['method']} failed:\n{proc.stderr[-3000:]}")
    r = json.loads((out / "result.json").read_text())
    feats = np.load(out / "features.npy") if (out / "features.npy").exists() else None
    return r, feats


def _row(method: str, r: dict, extra: dict | None = None) -> dict:
    ips = r["n"] / r["seconds"]
    return {"method": method,
            "metrics": {"images_per_second": round(ips, 2), "seconds": round(r["seconds"], 2),
                        "cpu_seconds": round(r["cpu_seconds"], 2),
                        "cores_busy": round(r["cpu_seconds"] / r["seconds"], 2),
                        "peak_memory_rss_mb": round(r["peak_rss_mb"], 1),
                        "memory_rss_before_loop_mb": round(r["rss_before_mb"], 1),
                        "setup_seconds": round(r["setup_seconds"], 2), **(extra or {})},
            "params": r["params"]}


def run_embed_bench(out: str | Path, n_images: int = 512, image_size: int = 224, batch_size: int = 64, workers: int = 2,
                    naive_batches: tuple[int, ...] = (1, 64), fashion_size: int | None = 64, log=print) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="clipforge-bench-embed-") as tmp:
        work = Path(tmp)
        paths, data_desc = benchmark_images(n_images, work / "images")
        log(f"clipforge: {len(paths)} images, {TOWER} at {image_size} px")
        spec = {"paths": paths, "size": image_size}
        tune, _ = _run_child({"method": "tune", "size": image_size}, work, log)
        log(f"  backend for this machine: {tune['backend']}/{tune['micro_batch']} ({tune['seconds']:.1f} s; "
            f"candidates, images/s of the model alone: {tune['timings_img_per_s']})")
        r_cf, f_cf = _run_child({**spec, "method": "clipforge", "batch": batch_size, "workers": workers}, work, log)
        log(f"  clipforge: {r_cf['n'] / r_cf['seconds']:.1f} img/s ({r_cf['params']['backend']})")
        naive = []
        for b in naive_batches:
            r, f = _run_child({**spec, "method": "naive", "batch": b}, work, log)
            naive.append((b, r, f))
            log(f"  naive eager batch {b}: {r['n'] / r['seconds']:.1f} img/s")
        best_naive = max(r["n"] / r["seconds"] for _, r, _ in naive)
        speedup = (r_cf["n"] / r_cf["seconds"]) / best_naive
        rows = [_row("clipforge", r_cf, {"speedup_vs_best_naive": round(speedup, 2)})]
        for b, r, f in naive:
            diff = float(np.abs(f - f_cf).max()) if f is not None and f.shape == f_cf.shape else None
            rows.append(_row(f"naive-eager-b{b}", r, {"max_abs_feature_diff_vs_clipforge": diff}))
        fashion = None
        if fashion_size:
            log(f"Fashion-MNIST 70k at {fashion_size} px ...")
            try:
                r, _ = _run_child({"method": "fashion-mnist", "size": fashion_size, "batch": batch_size}, work, log)
            except RuntimeError as e:
                log(f"  skipped: {str(e).splitlines()[0]}")
                r = None
            if r is not None:
                full_copy_mb = r["n"] * 3 * fashion_size * fashion_size * 4 / 2 ** 20
                fashion = _row("clipforge-fashion-mnist-70k", r)
                fashion["dataset"] = f"Fashion-MNIST train+test ({r['n']} images, 28x28 grey, embedded at {fashion_size} px)"
                fashion["metrics"]["full_resolution_copy_would_be_mb"] = round(full_copy_mb, 1)
                fashion["metrics"]["raw_uint8_images_mb"] = round(r["n"] * 28 * 28 / 2 ** 20, 1)
                fashion["metrics"]["output_features_mb"] = round(r["n"] * 1280 * 4 / 2 ** 20, 1)  # the result itself
                log(f"  {r['n']} images, {r['n'] / r['seconds']:.0f} img/s, peak RSS {r['peak_rss_mb']:.0f} MB "
                    f"(a float copy at {fashion_size} px would be {full_copy_mb:.0f} MB)")
    result = {
        "suite": "embed", "task": "image_embedding_throughput", "dataset": data_desc, "model": f"{TOWER} @ {image_size} px",
        "protocol": {
            "images": len(paths), "image_size": image_size,
            "same_run": "every method in this file ran in one 'clipforge bench embed' invocation, each in a fresh "
                        "child process (peak RSS is the child's ru_maxrss), on the same files",
            "timed": "the embedding loop only (model loading excluded for every method); clipforge's backend "
                     "set-up in the measured process (ONNX session) is setup_seconds; the one-time per-machine "
                     "choice of backend ran before, in its own process (backend_choice)",
            "same_work": "every method decodes with clipforge.data.images.load_image (alpha on white), resizes "
                         "with PIL bicubic to the tower size and normalises the same way; features agree to float noise",
            "acceptance": "clipforge images/s >= 3x the best naive row",
        },
        "results": rows + ([fashion] if fashion else []),
        "backend_choice": {"seconds": round(tune["seconds"], 2), "chosen": f"{tune['backend']}/{tune['micro_batch']}",
                           "model_only_images_per_second": tune["timings_img_per_s"],
                           "note": "timed once per machine (cached in ~/.cache/clipforge/fast-embed/choices.json); "
                                   "0 s here means an earlier run had already chosen"},
        "speedup_vs_best_naive": round(speedup, 2),
        "wall_seconds": round(time.time() - t_start, 1), "env": {**environment(), "onnxruntime": _ort_version()},
    }
    path = out / "embed.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def _ort_version() -> str | None:
    try:
        import onnxruntime
        return onnxruntime.__version__
    except ImportError:
        return None


if __name__ == "__main__":  # child process: python -m benchmarks.embed SPEC.json
    _child(json.loads(Path(sys.argv[1]).read_text()))
