"""``clipforge bench mnist`` (CLIPs from scratch on MNIST) and ``clipforge report`` (one HTML page)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from clipforge.cli.root import app, bench_app, friendly
from clipforge.cli.suites import method_list, require_suites


@bench_app.command("mnist")
@friendly
def bench_mnist(out: Path = typer.Option(Path("benchmarks/results"), help="output folder (mnist.json + thumbnails)"),
                methods: str = typer.Option("all",
                                            help="comma-separated methods (scratch rows, then frozen pretrained towers)"),
                epochs: Optional[int] = typer.Option(None, help="override the number of epochs"),
                logs: Optional[Path] = typer.Option(Path("runs/mnist"), help="TensorBoard logs, checkpoints and saved "
                                                   "models, one folder per method"),
                smoke: bool = typer.Option(False, help="sklearn's 8x8 digits and tiny towers: seconds, not minutes")):
    """10-way MNIST by text prompts: towers trained from scratch, and every baseline on frozen pretrained towers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_suites()
    from benchmarks.mnist import run_mnist
    path = run_mnist(out, method_list(methods, "MNIST_ALL"), epochs=epochs, logs=logs, smoke=smoke)
    typer.echo(f"wrote {path}")


@app.command()
@friendly
def report(directory: Path = typer.Argument(..., help="a folder of benchmark JSONs and/or run folders"),
           out: Optional[Path] = typer.Option(None, help="the HTML file (default DIR/report.html)"),
           title: str = typer.Option("clipforge report", help="page title")):
    """Turn benchmark JSONs and run logs into ONE self-contained HTML page (figures embedded, works offline)."""
    from clipforge.evaluate.report import build_report
    path = build_report(directory, out, title=title)
    typer.echo(f"wrote {path}")
