"""``clipforge bench all`` (every suite, every method, then the leaderboard) and ``clipforge bench leaderboard``."""
from __future__ import annotations

import os
from pathlib import Path

import typer

from clipforge.cli.root import bench_app, friendly
from clipforge.cli.suites import require_suites


@bench_app.command("all")
@friendly
def bench_all(out: Path = typer.Option(Path("benchmarks/results"), help="output folder")):
    """fashion-zsl, tux-retrieval, tux-retrieval-zh and mnist for every method; leaderboard.md + report.html."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_suites()
    from benchmarks.leaderboard import run_all
    for path in run_all(out):
        typer.echo(f"wrote {path}")


@bench_app.command("leaderboard")
@friendly
def bench_leaderboard(directory: Path = typer.Argument(Path("benchmarks/results"), help="folder of benchmark JSONs")):
    """Rebuild leaderboard.md from the benchmark JSONs already in DIR (no training)."""
    require_suites()
    from benchmarks.leaderboard import write_leaderboard
    typer.echo(f"wrote {write_leaderboard(directory)}")
