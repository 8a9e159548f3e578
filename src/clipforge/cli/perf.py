"""Performance benchmarks: ``bench embed`` (embedding throughput) and ``bench train-cache`` (cached head training)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import typer

from clipforge.cli.root import bench_app, friendly
from clipforge.cli.suites import require_suites


@bench_app.command("embed")
@friendly
def bench_embed(out: Path = typer.Option(Path("benchmarks/results"), help="output folder (embed.json)"),
                images: int = typer.Option(512, min=8, help="images to embed (Tux Paint stamps, or generated JPEGs)"),
                image_size: int = typer.Option(224, min=16, help="tower input size"),
                fashion_size: int = typer.Option(64, min=0, help="size for the 70k Fashion-MNIST memory row; 0 = skip it"),
                naive_batches: str = typer.Option("1,64", help="batch sizes of the naive eager loop")):
    """Naive eager loop vs clipforge's pipeline on the same images in one run: images/s, threads, peak RSS."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_suites()
    from benchmarks.embed import run_embed_bench
    batches = tuple(int(b) for b in naive_batches.split(",") if b.strip())
    path = run_embed_bench(out, n_images=images, image_size=image_size, fashion_size=fashion_size or None,
                           naive_batches=batches, log=typer.echo)
    typer.echo(f"wrote {path}")


@bench_app.command("train-cache")
@friendly
def bench_train_cache(out: Path = typer.Option(Path("benchmarks/results"), help="output folder (train-cache.json)"),
                      epochs: int = typer.Option(3, min=1), batch_size: int = typer.Option(128, min=2),
                      fold: int = typer.Option(0, min=0), source: str = typer.Option("tux-paint", help="caption source"),
                      set_: List[str] = typer.Option([], "--set", "-s", help="override a field of every run's config"),
                      default_epochs: int = typer.Option(30, min=0, help="epochs of the default-caption-config row "
                                                                          "(FLOPs, GFLOP/s vs the machine's); 0 = skip it")):
    """Seconds per epoch on cached features vs re-encoding the locked towers every step (open_clip LiT), and the
    packaged caption config's seconds per epoch, FLOPs and share of the machine's matmul GFLOP/s."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_suites()
    from benchmarks.train_cache import run_train_cache_bench
    path = run_train_cache_bench(out, epochs=epochs, batch_size=batch_size, fold=fold, source=source,
                                 overrides=list(set_), log=typer.echo, default_epochs=default_epochs)
    typer.echo(f"wrote {path}")
