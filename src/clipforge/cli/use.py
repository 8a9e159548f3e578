"""Using a model: index an image collection, search it, serve it, compare pairs, download a collection."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from clipforge.errors import ClipforgeError
from clipforge.util.paths import features_cache
from clipforge.cli.root import app, bench_app, friendly
from clipforge.cli.suites import require_suites

index_app = typer.Typer(no_args_is_help=True, help="A FAISS + SQLite index over an image collection.")
app.add_typer(index_app, name="index")


def _params(items: List[str]) -> dict:
    out = {}
    for it in items:
        key, sep, value = it.partition("=")
        if not sep or not value.strip().isdigit():
            raise ClipforgeError(f"--param '{it}' must look like name=integer (e.g. efSearch=128, nprobe=64, M=32)")
        out[key.strip()] = int(value)
    return out


def _print_skipped(skipped, limit: int = 10) -> None:
    if not skipped:
        return
    typer.echo(f"skipped {len(skipped)}:")
    for item, reason in skipped[:limit]:
        typer.echo(f"  {item}: {reason}")
    if len(skipped) > limit:
        typer.echo(f"  ... and {len(skipped) - limit} more ('clipforge index info INDEX --skipped' lists them all)")


@index_app.command("build")
@friendly
def index_build(source: Path = typer.Argument(..., help="an image folder, a caption CSV (filename,caption) or wds:<shards>"),
                model: Path = typer.Option(..., "--model", "-m", help="a saved clipforge model directory"),
                out: Path = typer.Option(..., "--out", "-o", help="the index folder (replaced atomically if it exists)"),
                kind: str = typer.Option("auto", help="auto (by size), flat (exact), hnsw or ivf"),
                param: List[str] = typer.Option([], "--param", "-p", help="index parameter, e.g. M=32, efSearch=128, nlist=4096, nprobe=32"),
                cache_dir: Optional[Path] = typer.Option(None, help="embedding cache (default: the user cache dir)"),
                batch_size: int = typer.Option(64, min=1), workers: int = typer.Option(2, min=1, help="decoding threads"),
                quiet: bool = typer.Option(False, help="no progress bar")):
    """Embed every image of SOURCE with the model and write a searchable index."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clipforge.index import ImageIndex
    ix = ImageIndex.build(source, model, out, kind, _params(param), cache_dir or features_cache(), batch_size, workers,
                          not quiet)
    typer.echo(f"{out}: {ix.report.summary()}")
    _print_skipped(ix.report.skipped)


@index_app.command("add")
@friendly
def index_add(index: Path = typer.Argument(..., help="an index folder"),
              source: Path = typer.Argument(..., help="an image folder or caption CSV"),
              model: Optional[Path] = typer.Option(None, "--model", "-m", help="default: the index's own model"),
              cache_dir: Optional[Path] = typer.Option(None, help="embedding cache (default: the user cache dir)"),
              batch_size: int = typer.Option(64, min=1),
              workers: int = typer.Option(2, min=1), quiet: bool = typer.Option(False)):
    """Add the images of SOURCE that are not in the index yet (by content), as a new version of the index."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clipforge.index import ImageIndex
    ix = ImageIndex.load(index, model=model)
    report = ix.add(source, cache_dir=cache_dir or features_cache(), batch_size=batch_size, workers=workers, progress=not quiet)
    typer.echo(f"{index}: {report.summary()}")
    _print_skipped(report.skipped)


@index_app.command("search")
@friendly
def index_search(index: Path = typer.Argument(...), query: Optional[str] = typer.Argument(None, help="a text query"),
                 image: Optional[Path] = typer.Option(None, "--image", help="search by this image instead"),
                 k: int = typer.Option(10, "-k", "--k", min=1),
                 model: Optional[Path] = typer.Option(None, "--model", "-m", help="default: the index's own model"),
                 param: List[str] = typer.Option([], "--param", "-p", help="search parameter: efSearch=N or nprobe=N"),
                 as_json: bool = typer.Option(False, "--json", help="one JSON object per hit")):
    """Search the index by text (QUERY) or by an image (--image)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clipforge.index import ImageIndex
    if (query is None) == (image is None):
        raise ClipforgeError("give a text QUERY or --image PATH (one of them)")
    if query is not None and not query.strip():
        raise ClipforgeError("the text QUERY is empty: give some words to search for (or --image PATH)")
    ix = ImageIndex.load(index, model=model, search_params=_params(param))
    hits = ix.search_text(query, k) if query is not None else ix.search_image(image, k)
    for rank, h in enumerate(hits, 1):
        if as_json:
            typer.echo(json.dumps({"rank": rank, **h.to_dict()}, ensure_ascii=False))
        else:
            typer.echo(f"{rank:3d}  {h.score:.4f}  {h.path}" + (f"  {h.caption}" if h.caption else ""))


@index_app.command("info")
@friendly
def index_info(index: Path = typer.Argument(...), skipped: bool = typer.Option(False, "--skipped", help="list every skipped item")):
    """What an index holds: size, index kind and parameters, model, sources, skipped items."""
    from clipforge.index import ImageIndex
    ix = ImageIndex.load(index)
    m = ix.manifest
    typer.echo(json.dumps({"images": len(ix), "dim": ix.dim, "ann": m["ann"], "model": m["model"],
                           "sources": m.get("sources"), "skipped": len(ix.skipped()), "version": ix.version.name},
                          indent=2, ensure_ascii=False))
    if skipped:
        for item, reason in ix.skipped():
            typer.echo(f"{item}\t{reason}")


@app.command()
@friendly
def serve(index: Path = typer.Argument(..., help="an index folder (clipforge index build)"),
          host: str = typer.Option("127.0.0.1", help="bind address; 127.0.0.1 keeps it on this machine"),
          port: int = typer.Option(8000), model: Optional[Path] = typer.Option(None, "--model", "-m"),
          max_upload_mb: float = typer.Option(10.0, help="larger request bodies get 413"),
          max_pixels: int = typer.Option(40_000_000, help="larger images get 413 (decompression bombs)"),
          torch_threads: int = typer.Option(1, help="threads of the forward passes (the event loop needs a core too)"),
          max_batch: int = typer.Option(64, min=1, help="most concurrent text queries embedded in one forward pass"),
          query_cache: int = typer.Option(4096, min=0, help="text embeddings of recent queries kept (0 = none)"),
          text_runtime: str = typer.Option("auto", help="text tower on onnx (ONNX Runtime), torch, or auto"),
          text_workers: int = typer.Option(2, min=1, help="text batches embedded at the same time (one thread each)"),
          allowed_hosts: List[str] = typer.Option([], "--allowed-hosts", help="a Host header name to serve (repeatable; '*' for any); default: the loopback names when bound to loopback, any otherwise"),
          header_timeout: float = typer.Option(5.0, help="seconds a connection may take to send its request header (and may stay idle between requests)"),
          max_aspect: float = typer.Option(50.0, help="uploads with a longer side over this many times the shorter get 422"),
          max_decoded_mb: float = typer.Option(128.0, help="uploads that would take more memory decoded get 413"),
          decode_workers: int = typer.Option(2, min=1, help="uploads decoded and embedded at the same time"),
          access_log: bool = typer.Option(False, help="log every request")):
    """Web service + page: text and image search, zero-shot classification, similarity, thumbnails (docs at /docs)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not 1 <= port <= 65535:
        raise ClipforgeError(f"--port {port} is not a TCP port: use 1 to 65535 (8000 is the default)")
    for flag, value in (("--max-upload-mb", max_upload_mb), ("--max-pixels", max_pixels), ("--torch-threads", torch_threads)):
        if not 0 < value < float("inf"):
            raise ClipforgeError(f"{flag} must be a positive finite number, not {value}")
    for flag, value in (("--header-timeout", header_timeout), ("--max-aspect", max_aspect), ("--max-decoded-mb", max_decoded_mb)):
        if not 0 < value < float("inf"):
            raise ClipforgeError(f"{flag} must be a positive finite number, not {value}")
    from clipforge.serve import ServeSettings, default_allowed_hosts, run
    hosts = tuple(h.strip() for h in allowed_hosts if h.strip()) or default_allowed_hosts(host)
    settings = ServeSettings(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels,
                             max_batch=max_batch, query_cache=query_cache, text_runtime=text_runtime, text_workers=text_workers,
                             allowed_hosts=hosts, max_aspect=max_aspect, max_decoded_mb=max_decoded_mb,
                             decode_workers=decode_workers)
    # announced once the index is open: a folder that is not an index gives its one error line and nothing else
    run(index, host, port, settings, model=model, torch_threads=torch_threads, access_log=access_log,
        header_timeout=header_timeout,
        announce=lambda url: typer.echo(f"clipforge serving {index} on {url} (API docs at /docs)"
                                        + ("" if "*" not in hosts else "; any Host header is accepted")))


@app.command()
@friendly
def similarity(model: Path = typer.Option(..., "--model", "-m", help="a saved clipforge model directory"),
               image: List[Path] = typer.Option([], "--image", help="an image file (repeatable)"),
               text: List[str] = typer.Option([], "--text", help="a text (repeatable)")):
    """Similarity of every pair of the given images and texts (image-text, text-text, image-image), as JSON lines."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clipforge.index.core import as_image
    from clipforge.model.dual_encoder import DualEncoder
    from clipforge.model.similarity import Image, Similarity, Text
    items = [Image(as_image(p)) for p in image] + [Text(t) for t in text]
    names = [str(p) for p in image] + list(text)
    if len(items) < 2:
        raise ClipforgeError("give at least two items (--image and/or --text)")
    sim = Similarity(DualEncoder.from_pretrained(model))
    for r in sim.all_pairs(items):
        typer.echo(json.dumps({**r, "a": names[r["a"]], "b": names[r["b"]]}, ensure_ascii=False))


@app.command()
@friendly
def download(urls: Path = typer.Argument(..., help="CSV / TSV / parquet with url[,caption] columns, or a text file of URLs"),
             out: Path = typer.Option(..., "--out", "-o", help="output folder (WebDataset shards + failures.csv)"),
             workers: int = typer.Option(16, min=1, help="download threads per process"),
             processes: int = typer.Option(1, min=1, help="img2dataset processes"),
             timeout: float = typer.Option(10.0, help="seconds per request"),
             retries: int = typer.Option(3, min=0), min_side: int = typer.Option(32, min=1, help="drop smaller images"),
             max_side: int = typer.Option(0, min=0, help="shrink larger images to this side (0 = keep)"),
             image_format: str = typer.Option("jpg", "--format", help="jpg, png or webp"),
             shard_size: int = typer.Option(10_000, min=1, help="URLs per shard"), quiet: bool = typer.Option(False)):
    """Fetch an image collection with img2dataset into WebDataset shards (resumable per shard); read them as wds:OUT."""
    from clipforge.data.download import DownloadSettings
    from clipforge.data.download import download as run_download
    s = DownloadSettings(workers=workers, processes=processes, timeout=timeout, retries=retries, min_side=min_side,
                         max_side=max_side, image_format=image_format, shard_size=shard_size)
    report = run_download(urls, out, s, progress=not quiet)
    typer.echo(report.summary())
    if report.failed:
        typer.echo(f"failures: {report.out / 'failures.csv'}")


@bench_app.command("ann")
@friendly
def bench_ann(out: Path = typer.Option(Path("benchmarks/results"), help="output folder"),
              n: int = typer.Option(1_000_000, help="database vectors"), dim: int = typer.Option(256),
              queries: int = typer.Option(1000, help="queries for recall and latency")):
    """ANN latency (p50/p99, one query at a time) and recall@10 against exact search, plus numpy brute force."""
    require_suites()
    from benchmarks.ann import run_ann
    typer.echo(f"wrote {run_ann(out, n, dim, queries)}")


@bench_app.command("serve")
@friendly
def bench_serve(out: Path = typer.Option(Path("benchmarks/results"), help="output folder"),
                images: int = typer.Option(10_000, help="index size (synthetic vectors)"),
                seconds: int = typer.Option(20, help="length of each load run"),
                connections: int = typer.Option(8, help="concurrent connections of the load generator (a second run uses twice as many)")):
    """Requests/s, p50/p99 latency and errors of text search over loopback (real text tower, wrk if present)."""
    require_suites()
    from benchmarks.serve import run_serve
    typer.echo(f"wrote {run_serve(out, images, seconds, connections)}")
