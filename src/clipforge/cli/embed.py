"""``clipforge embed`` (WebDataset shards -> a feature store, on one process or many under torchrun) and
``clipforge bench scale`` (embedding and store training at growing N)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from clipforge.cli.root import app, bench_app, friendly
from clipforge.cli.suites import require_suites


@app.command("embed")
@friendly
def embed_cmd(data: str = typer.Option(..., "--data", help="WebDataset shards: wds:<tar | folder of tars | brace "
                                                             "pattern such as shards/{00000..00099}.tar>"),
              out: Path = typer.Option(..., "--out", help="the feature store folder (img_emb/, text_emb/, metadata/)"),
              image_tower: str = typer.Option("pkg:efficientnet-lite0", help="locked image tower id"),
              text_tower: str = typer.Option("pkg:all-MiniLM-L6-v2", help="locked text tower id; 'none' = images only"),
              image_size: int = typer.Option(224, min=16, max=1024, help="image tower input size in pixels"),
              invert: bool = typer.Option(False, help="invert grey light-on-dark images (MNIST-like)"),
              dtype: str = typer.Option("float16", help="float16 (as clip-retrieval) or float32"),
              caption_field: str = typer.Option("txt", help="the sample member (or .json field) holding the caption"),
              batch_size: int = typer.Option(64, min=1),
              backend: Optional[str] = typer.Option(None, help="image backend: auto, off, onnx, onnx-parallel, "
                                                               "fused, eager (default: CLIPFORGE_EMBED_BACKEND or auto)"),
              quiet: bool = typer.Option(False, help="no per-shard lines")):
    """Embed every shard once into a clip-retrieval-layout feature store; rerun to resume after a crash.

    Under ``torchrun --nnodes=N --nproc_per_node=M -m clipforge.cli embed ...`` rank r of W takes the shards
    i with i % W == r (--out must be a folder every node can write to)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clipforge.data.wds import list_shards
    from clipforge.embed.store import embed_to_store, unfinished
    from clipforge.errors import ClipforgeError
    from clipforge.towers import build_tower
    from clipforge.train.distributed import init_distributed, shutdown
    if not data.startswith("wds:"):
        raise ClipforgeError(f"--data is '{data}'; clipforge embed reads WebDataset shards: --data wds:<shards>")
    shards = list_shards(data)
    world = init_distributed()
    image = build_tower(image_tower, "image", image_size, invert).lock()
    text = None if text_tower.strip().lower() == "none" else build_tower(text_tower, "text").lock()
    say = None if quiet else (lambda m: typer.echo(f"[rank {world.rank}] {m}" if world.size > 1 else m))
    summary = embed_to_store(shards, out, image, text, world.rank, world.size, dtype, caption_field, batch_size,
                             backend, log=say)
    shutdown()  # every rank's shards are written before rank 0 checks the whole store
    if not world.is_main:
        return
    left = unfinished(out)
    if left and world.size == 1:
        raise ClipforgeError(f"{len(left)} shard(s) of {summary.shards} are not finished; rerun the same command")
    if left:  # every rank finished its shards (the barrier), so these live in other machines' --out folders
        typer.echo(f"note: {len(left)} shard(s) are not in {out} on this machine (first: {left[0]}): written by "
                   "other nodes; copy the nodes' folders into one (file names are global shard numbers)")
    typer.echo(f"feature store {out}: {summary.shards - len(left)} of {summary.shards} shards done; this process: "
               f"{len(summary.computed)} embedded, {len(summary.reused)} already done, {summary.rows} rows, "
               f"{summary.skipped} skipped, {summary.seconds:.1f} s")


@bench_app.command("scale")
@friendly
def bench_scale(out: Path = typer.Option(Path("benchmarks/results"), help="output folder (scale.json)"),
                n: str = typer.Option("10000,50000", "--n", help="image counts of the embedding stage"),
                train_n: str = typer.Option("100000,1000000", help="pair counts of the training stage"),
                image_tower: str = typer.Option("pkg:efficientnet-lite0", help="image tower of the embedding stage"),
                image_size: int = typer.Option(32, min=16, help="its input size (small: this is a scale test)"),
                text_tower: str = typer.Option("pkg:all-MiniLM-L6-v2", help="text tower (the captions' features)"),
                embed_text: bool = typer.Option(False, help="embed the captions in the embed stage too (slow)"),
                shard_size: int = typer.Option(2000, min=10, help="samples per synthetic shard"),
                store_shard: int = typer.Option(50000, min=10, help="rows per shard of the cached-pairs stores"),
                epochs: int = typer.Option(2, min=1, help="training epochs per N (seconds/epoch is their mean; one epoch is a short, noisy sample)"),
                threads: int = typer.Option(1, min=1, help="torch/ONNX threads per child process"),
                set_: List[str] = typer.Option([], "--set", "-s", help="override a field of the training config")):
    """Embedding images/s and store training seconds/epoch at growing N, each N in a fresh process (peak RSS)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_suites()
    from benchmarks.scale import run_scale_bench
    counts = [int(x) for x in n.split(",") if x.strip()]
    pairs = [int(x) for x in train_n.split(",") if x.strip()]
    path = run_scale_bench(out, counts, pairs, image_tower=image_tower, image_size=image_size, text_tower=text_tower,
                           embed_text=embed_text, shard_size=shard_size, store_shard=store_shard, epochs=epochs,
                           overrides=list(set_), threads=threads, log=typer.echo)
    typer.echo(f"wrote {path}")
