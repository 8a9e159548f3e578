"""The root of the ``clipforge`` command: the typer apps and the one-line error wrapper every command uses."""
from __future__ import annotations

import functools

import typer

from clipforge.errors import ClipforgeError

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


def main():  # pragma: no cover
    app()
