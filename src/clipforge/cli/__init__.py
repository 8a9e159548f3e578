"""The ``clipforge`` command: a thin typer layer over the library. User mistakes print one line, exit 2.

Each command group lives in its own module and registers itself on ``app`` (or ``bench_app``) when
imported below, so the CLI reads like the pipeline and stays small per file.
"""
from __future__ import annotations

import functools

import typer

from ..errors import ClipforgeError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Forge a CLIP from pretrained unimodal towers.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that write CLIP_benchmark-style JSON.")
app.add_typer(bench_app, name="bench")


def friendly(fn):
    """Turn a ClipforgeError (a user mistake) into one red line and exit code 2, without a traceback."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except ClipforgeError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2)
    return wrapper


# Command modules register themselves on import (keep this list in pipeline order).
from . import core  # noqa: E402,F401
from . import caption  # noqa: E402,F401  (train, eval, bench tux-retrieval)
from . import leaderboard  # noqa: E402,F401  (bench all, bench leaderboard)
from . import mnist_report  # noqa: E402,F401  (bench mnist, report)
from . import use  # noqa: E402,F401  (index, serve, similarity, download)
from . import bilingual  # noqa: E402,F401  (distill, zeroshot, export, bench tux-retrieval-zh, fashion-zsl-zh)
from . import perf  # noqa: E402,F401  (bench embed, bench train-cache)


def main():  # pragma: no cover
    app()
