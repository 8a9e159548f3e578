"""The ``clipforge`` command: a thin typer layer over the library. User mistakes print one line, exit 2.

Each command group lives in its own module and registers itself on ``app`` (or ``bench_app``) when
imported below, so the CLI reads like the pipeline and stays small per file.
"""
from clipforge.cli.root import app, bench_app, friendly, main  # noqa: F401

# Command modules register themselves on import (keep this list in pipeline order).
from clipforge.cli import core  # noqa: E402,F401
from clipforge.cli import caption  # noqa: E402,F401  (train, eval, bench tux-retrieval)
from clipforge.cli import leaderboard  # noqa: E402,F401  (bench all, bench leaderboard)
from clipforge.cli import mnist_report  # noqa: E402,F401  (bench mnist, report)
from clipforge.cli import use  # noqa: E402,F401  (index, serve, similarity, download)
from clipforge.cli import bilingual  # noqa: E402,F401  (distill, zeroshot, export, bench tux-retrieval-zh, fashion-zsl-zh)
from clipforge.cli import perf  # noqa: E402,F401  (bench embed, bench train-cache)
from clipforge.cli import embed  # noqa: E402,F401  (embed, bench scale)
from clipforge.cli import heldout  # noqa: E402,F401  (bench fashion-zsl-fresh, bench transfer)
