"""The held-out benchmarks, where claims are made: ``bench fashion-zsl-fresh`` (20 splits never used to choose
anything) and ``bench transfer`` (train on one packaged set, classify another one's classes by name)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import typer

from clipforge.cli.root import bench_app, friendly
from clipforge.cli.suites import method_list, require_suites


@bench_app.command("fashion-zsl-fresh")
@friendly
def bench_fashion_zsl_fresh(out: Path = typer.Option(Path("benchmarks/results"), help="output folder"),
                            set_: List[str] = typer.Option([], "--set", "-s", help="override a field of the default config"),
                            methods: str = typer.Option("all", help="comma-separated methods (all = every fashion-zsl method)"),
                            splits: int = typer.Option(20, help="run only the first N of the 20 fresh splits (a quick look)")):
    """Fashion-MNIST zero-shot on 20 fresh 7/3 splits drawn by a fixed rule (docs/benchmarks.md)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_suites()
    from benchmarks.fashion_zsl_fresh import run_fashion_zsl_fresh
    path = run_fashion_zsl_fresh(out, method_list(methods, "FASHION_ALL"), list(set_), n_splits=splits)
    typer.echo(f"wrote {path}")


@bench_app.command("transfer")
@friendly
def bench_transfer(out: Path = typer.Option(Path("benchmarks/results"), help="output folder"),
                   set_: List[str] = typer.Option([], "--set", "-s", help="override a field of the caption config"),
                   methods: str = typer.Option("all", help="comma-separated methods (all = clipforge + every closed-form baseline)"),
                   targets: str = typer.Option("all", help="comma-separated targets (all = every target)"),
                   limit: int = typer.Option(0, help="at most N images per training source and per target (0 = all; a quick look)")):
    """Cross-dataset zero-shot: train on packaged caption pairs, classify another set's classes by name."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_suites()
    from benchmarks.transfer import run_transfer
    names = None if targets.strip() == "all" else [t.strip() for t in targets.split(",") if t.strip()]
    path = run_transfer(out, method_list(methods, "TRANSFER_ALL"), list(set_), targets=names, limit=limit or None)
    typer.echo(f"wrote {path}")


@bench_app.command("general")
@friendly
def bench_general(out: Path = typer.Option(Path("benchmarks/results"), help="output folder"),
                  set_: List[str] = typer.Option([], "--set", "-s", help="override a field of the general config"),
                  folds: str = typer.Option("0", help="comma-separated held-out folds of 5 (e.g. 0,1,2,3,4)")):
    """The general model's recipe with a fold held out: English and Chinese retrieval MR on that fold."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_suites()
    from benchmarks.general import run_general
    path = run_general(out, [int(f) for f in folds.split(",") if f.strip()], list(set_))
    typer.echo(f"wrote {path}")
