"""``clipforge bench scale``: does the feature store keep memory and time per item flat as N grows?

One run measures two stages, each N in a fresh child process (so its peak RSS, VmHWM, is its own):

* ``embed``: ``clipforge embed``'s code path (``embed_to_store``) over synthetic WebDataset shards of N images:
  images/s and peak RSS. The shards are made here from the packaged Tux Paint stamps (scikit-image's sample
  photos when the stamps are not installed): each sample a random crop of a stamp, a random horizontal flip and
  colour jitter (brightness, contrast, saturation), saved as JPEG; its caption the stamp's real caption with
  random template words around it. The larger N's shards extend the smaller N's, so the images are alike.
* ``train``: caption heads trained from a store of N cached pairs (``pipelines.store.train_from_store``):
  seconds per epoch and peak RSS. The pairs are the embed stage's image features (the smallest N's store) and the
  text tower's features of each image's stamp caption, replicated to N rows with Gaussian noise (0.1 x each
  feature's spread) and written as a store (float16, shards of ``store_shard`` rows).

The JSON holds every N's numbers and, per stage, ``rss_ratio`` = peak RSS(largest N) / peak RSS(smallest N) and
``seconds_per_item_ratio`` = s/item(largest N) / s/item(smallest N); targets: both ratios near 1 (rss <= 1.5,
time in [0.75, 1.3]) and training at 1M pairs under 2 GB.
"""
from __future__ import annotations

import io
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

# What training runs by default: a light head, so that an epoch over 1M pairs fits the suite's 15 minutes on two
# cores (the packaged caption heads, 3 x MLP 1280-1024-384, cost ~40x more per pair). --set changes any of it.
TRAIN_DEFAULTS = ["head.kind=linear", "head.text_head=true", "head.embed_dim=128", "train.ensemble=1",
                  "train.batch_size=512", "bridge.alpha=0", "train.warmup_steps=10"]
TEMPLATE_WORDS = ["a photo of", "a drawing of", "a picture of", "clip art of", "a small", "a big", "a bright",
                  "a cartoon", "an image of", "my favourite", "look at", "the"]


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- synthetic shards -----------------------------------------------------------------------------------------

def source_images(max_side: int = 160):
    """(RGB images downsized to ``max_side``, captions, description) of the packaged pictures."""
    from PIL import Image
    from clipforge.data.images import load_image
    try:
        from clipforge.data.tux_paint import load_tux_paint
        ds = load_tux_paint()
        pairs = [(p, c[0]) for p, c in zip(ds.paths, ds.captions) if c]
        what = f"Tux Paint stamps ({len(pairs)} captioned PNGs)"
    except Exception:  # noqa: BLE001 - not installed: the sample photos every scikit-image has
        from skimage import data
        names = ["astronaut", "chelsea", "coffee", "rocket", "horse", "camera", "cat", "hubble_deep_field"]
        pairs = [(Image.fromarray(getattr(data, n)()), n.replace("_", " ")) for n in names]
        what = f"scikit-image sample photos ({len(pairs)})"
    images, captions = [], []
    for src, cap in pairs:
        img = src if isinstance(src, Image.Image) else load_image(src)[0]
        if img is None:
            continue
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side))
        images.append(img)
        captions.append(cap)
    return images, captions, what


def augment(img, rng: np.random.RandomState, out_side: int):
    """A random crop (60-100% of each side), a coin-flip mirror and colour jitter, resized to ``out_side``."""
    from PIL import Image, ImageEnhance
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    x, y = rng.randint(0, w - cw + 1), rng.randint(0, h - ch + 1)
    out = img.crop((x, y, x + cw, y + ch)).resize((out_side, out_side), Image.BILINEAR)
    if rng.rand() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(rng.uniform(0.7, 1.3))
    return out


def make_shards(folder: Path, n: int, shard_size: int, out_side: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[str], str]:
    """``n`` synthetic samples in shards of ``shard_size``; returns (shards, source index per sample, captions of
    the sources, description)."""
    import webdataset as wds
    images, captions, what = source_images()
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shards, sources = [], np.empty(n, np.int64)
    for s in range(0, n, shard_size):
        path = folder / f"{s // shard_size:05d}.tar"
        with wds.TarWriter(str(path)) as w:
            for j in range(s, min(n, s + shard_size)):
                k = rng.randint(len(images))
                sources[j] = k
                buf = io.BytesIO()
                augment(images[k], rng, out_side).save(buf, "JPEG", quality=85)
                words = rng.choice(TEMPLATE_WORDS, rng.randint(1, 3), replace=False)
                cap = f"{words[0]} {captions[k]}" + (f", {words[1]}" if len(words) > 1 else "")
                w.write({"__key__": f"{j:08d}", "jpg": buf.getvalue(), "txt": cap})
        shards.append(str(path))
    return shards, sources, captions, what


# -- the child processes --------------------------------------------------------------------------------------

def _child_embed(spec: dict) -> dict:
    import torch
    from clipforge.embed.fast import fast_encoder
    from clipforge.embed.store import embed_to_store
    from clipforge.towers import build_tower
    t0 = time.perf_counter()
    image = build_tower(spec["image_tower"], "image", spec["image_size"]).lock()
    text = build_tower(spec["text_tower"], "text").lock() if spec["text_tower"] != "none" else None
    enc = fast_encoder(image)                   # the backend chosen before, in the tune child (cached choice)
    setup = time.perf_counter() - t0
    if spec.get("tune_only"):
        return {"setup_seconds": setup, "backend": enc.backend if enc else "plain"}
    t0 = time.perf_counter()
    s = embed_to_store(spec["shards"], spec["out"], image, text, batch_size=spec["batch_size"])
    seconds = time.perf_counter() - t0
    return {"n": s.rows, "skipped": s.skipped, "seconds": seconds, "setup_seconds": setup,
            "backend": f"{enc.backend}/{enc.micro_batch}" if enc else "plain", "torch_threads": torch.get_num_threads()}


def _child_train(spec: dict) -> dict:
    import torch
    from clipforge.config import CaptionRunConfig, build_config
    from clipforge.pipelines.store import train_from_store
    cfg = build_config(CaptionRunConfig, {"out": spec["out"], "train": {"epochs": spec["epochs"]}}, spec["overrides"])
    r = train_from_store(spec["store"], cfg, buffer_rows=spec["buffer_rows"], save=False)
    per_epoch = [h["seconds"] for h in r["history"]]
    return {"n": r["n_pairs"], "seconds_per_epoch": float(np.mean(per_epoch)), "epoch_seconds": per_epoch,
            "prepare_seconds": r["seconds"]["prepare"], "losses": [h["loss"] for h in r["history"]],
            "steps_per_epoch": r["steps_per_epoch"], "batch_size": r["batch_size"], "shuffle": r["shuffle"],
            "torch_threads": torch.get_num_threads(), "config": cfg.model_dump(include={"head", "train", "loss"})}


def _child(spec_path: str) -> None:
    import torch
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    r = _child_embed(spec) if spec["stage"] == "embed" else _child_train(spec)
    r["peak_rss_mb"] = _peak_rss_mb()
    Path(spec_path).with_suffix(".result.json").write_text(json.dumps(r))


def _run_child(spec: dict, work: Path) -> dict:
    fd, path = tempfile.mkstemp(dir=work, prefix=f"{spec['stage']}-", suffix=".json")
    os.close(fd)
    Path(path).write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(spec["threads"])}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale", path], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['stage']} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(Path(path).with_suffix(".result.json").read_text())


# -- the cached-pairs stores ----------------------------------------------------------------------------------

def write_pair_store(root: Path, n: int, base_img: np.ndarray, base_txt: np.ndarray, manifest: dict,
                     store_shard: int, seed: int = 0) -> None:
    """``n`` pairs: row j = base pair j % len(base) plus Gaussian noise (0.1 x each feature's spread)."""
    from clipforge.embed.store import ensure_manifest, file_digest, shard_key, write_shard
    names = [f"pairs-{i:05d}" for i in range(-(-n // store_shard))]
    manifest = {**manifest, "shards": names}
    layout = ensure_manifest(root, manifest)
    rng = np.random.default_rng(seed)
    s_img, s_txt = base_img.std(0) * 0.1, base_txt.std(0) * 0.1
    for i, name in enumerate(names):
        rows = np.arange(i * store_shard, min(n, (i + 1) * store_shard))
        src = rows % len(base_img)
        img = (base_img[src] + rng.standard_normal((len(rows), base_img.shape[1]), np.float32) * s_img)
        txt = (base_txt[src] + rng.standard_normal((len(rows), base_txt.shape[1]), np.float32) * s_txt)
        keys = [str(r) for r in rows]
        digest = file_digest(name)
        write_shard(layout, i, img.astype(manifest["dtype"]), txt.astype(manifest["dtype"]),
                    {"image_path": keys, "caption": keys, "key": keys, "shard": [name] * len(rows)},
                    {"key": shard_key(manifest, digest), "shard": name, "digest": digest, "skipped": []})


def _ratios(rows: list[dict], per_item: str) -> dict:
    small, large = rows[0], rows[-1]
    return {"rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
            "seconds_per_item_ratio": round(large[per_item] / small[per_item], 3),
            "peak_rss_mb": {str(r["n"]): round(r["peak_rss_mb"], 1) for r in rows}}


def summarise(embed_rows: list[dict], train_rows: list[dict]) -> dict:
    """Per stage: every N's row, the two ratios and the targets met (or not)."""
    for r in embed_rows:
        r["seconds_per_item"] = r["seconds"] / max(1, r["n"])
        r["images_per_second"] = round(r["n"] / r["seconds"], 1)
    for r in train_rows:
        r["seconds_per_item"] = r["seconds_per_epoch"] / max(1, r["n"])
    stages = {}
    for name, rows in (("embed", embed_rows), ("train", train_rows)):
        if not rows:
            continue
        s = _ratios(sorted(rows, key=lambda r: r["n"]), "seconds_per_item")
        s["targets"] = {"rss_ratio<=1.5": s["rss_ratio"] <= 1.5,
                        "0.75<=seconds_per_item_ratio<=1.3": 0.75 <= s["seconds_per_item_ratio"] <= 1.3}
        stages[name] = s
    big = [r for r in train_rows if r["n"] >= 1_000_000]
    if big:
        stages["train"]["targets"]["peak_rss_at_1M_pairs<2048MB"] = all(r["peak_rss_mb"] < 2048 for r in big)
    return stages


def run_scale_bench(out: str | Path, counts: list[int], pairs: list[int], image_tower: str = "pkg:efficientnet-lite0",
                    image_size: int = 32, text_tower: str = "pkg:all-MiniLM-L6-v2", embed_text: bool = False,
                    shard_size: int = 2000, store_shard: int = 50_000, epochs: int = 1, overrides: list[str] = (),
                    batch_size: int = 64, buffer_rows: int = 32768, threads: int = 1, log=print) -> Path:
    from clipforge.embed.store import make_manifest
    from clipforge.embed.store_reader import FeatureStore
    from clipforge.towers import build_tower
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts, pairs = sorted(counts), sorted(pairs)
    t_start = time.time()
    overrides = TRAIN_DEFAULTS + list(overrides)
    with tempfile.TemporaryDirectory(prefix="clipforge-bench-scale-") as tmp:
        work = Path(tmp)
        t0 = time.time()
        shards, sources, captions, what = make_shards(work / "shards", counts[-1], shard_size, 2 * image_size)
        log(f"data: {counts[-1]} synthetic samples in {len(shards)} shards from {what} ({time.time() - t0:.0f} s)")
        base = {"stage": "embed", "threads": threads, "image_tower": image_tower, "image_size": image_size, "batch_size": batch_size,
                "text_tower": text_tower if embed_text else "none"}
        tune = _run_child({**base, "tune_only": True}, work)
        log(f"embed backend: {tune['backend']} (chosen once per machine, before the timed runs)")
        embed_rows = []
        for n in counts:
            r = _run_child({**base, "shards": shards[:-(-n // shard_size)], "out": str(work / f"store-{n}")}, work)
            embed_rows.append(r)
            log(f"embed N={r['n']}: {r['n'] / r['seconds']:.0f} img/s, peak RSS {r['peak_rss_mb']:.0f} MB")
        train_rows = []
        if pairs:
            image = build_tower(image_tower, "image", image_size).lock()
            text = build_tower(text_tower, "text").lock()
            store = FeatureStore(work / f"store-{counts[0]}")
            base_img = np.concatenate([store.read(i, 0, int(c))[0] for i, c in enumerate(store.counts)]).astype(np.float32)
            keys = [int(k) for k in store.metadata().column("key").to_pylist()]
            cap_feats = text.encode(captions, batch_size=128).astype(np.float32)
            base_txt = cap_feats[sources[keys]]
            manifest = make_manifest(image, text, [], "float16", "txt")
            for n in pairs:
                t0 = time.time()
                root = work / f"pairs-{n}"
                write_pair_store(root, n, base_img, base_txt, manifest, store_shard)
                log(f"train N={n}: store written ({time.time() - t0:.0f} s)")
                r = _run_child({"stage": "train", "threads": threads, "store": str(root), "out": str(work / f"run-{n}"), "epochs": epochs,
                                "overrides": overrides, "buffer_rows": buffer_rows}, work)
                train_rows.append(r)
                log(f"train N={n}: {r['seconds_per_epoch']:.1f} s/epoch, peak RSS {r['peak_rss_mb']:.0f} MB")
                for p in root.rglob("*.npy"):                  # the 1M store is GBs: free the disk as we go
                    p.unlink()
    stages = summarise(embed_rows, train_rows)
    result = {
        "suite": "scale", "task": "feature_store_scaling",
        "dataset": f"synthetic WebDataset shards from {what}: random crops, flips and colour jitter at "
                   f"{2 * image_size} px JPEG; captions = the real caption with random template words",
        "model": f"{image_tower} @ {image_size} px" + (f" + {text_tower}" if embed_text else " (images only)"),
        "protocol": {
            "embed": f"clipforge embed's code path (embed_to_store) over the first N samples' shards of {shard_size}, "
                     f"text tower {'on' if embed_text else 'off'}; timed: the whole store write (shard hashing, "
                     "decoding, model, atomic writes), tower loading excluded; each N in a fresh process",
            "train": f"train_from_store over N cached pairs (the smallest embed store's image features and "
                     f"{text_tower} features of each image's source caption, replicated with noise; float16 store "
                     f"in shards of {store_shard} rows; shuffle buffer {buffer_rows} rows), {epochs} epoch(s), "
                     f"config overrides {overrides}; each N in a fresh process",
            "threads": f"{threads} torch/ONNX thread(s) per child (OMP_NUM_THREADS): on a shared 2-core machine one "
                       "thread per process is steadier and faster than two that wait on each other",
            "peak_rss": "VmHWM of the child process (file pages of the memory-mapped store count while mapped)",
            "targets": "train peak RSS at 1M pairs < 2 GB; every rss_ratio <= 1.5; every seconds_per_item_ratio "
                       "in [0.75, 1.3]",
        },
        "results": [{"method": f"embed-{r['n']}", "stage": "embed", "n": r["n"], "metrics": {k: r[k] for k in ("images_per_second", "seconds",
                     "seconds_per_item", "peak_rss_mb", "setup_seconds") if k in r}, "params": {
                     "backend": r["backend"], "torch_threads": r["torch_threads"], "skipped": r["skipped"]}}
                    for r in embed_rows] +
                   [{"method": f"train-{r['n']}", "stage": "train", "n": r["n"], "metrics": {k: r[k] for k in ("seconds_per_epoch", "epoch_seconds",
                     "seconds_per_item", "peak_rss_mb", "prepare_seconds", "losses")}, "params": {
                     "steps_per_epoch": r["steps_per_epoch"], "batch_size": r["batch_size"], "shuffle": r["shuffle"],
                     "torch_threads": r["torch_threads"], "config": r["config"]}} for r in train_rows],
        "stages": stages,
        "wall_seconds": round(time.time() - t_start, 1), "env": environment(),
    }
    path = out / "scale.json"
    path.write_text(json.dumps(result, indent=1))
    return path


if __name__ == "__main__":  # child process: python -m benchmarks.scale SPEC.json
    _child(sys.argv[1])
