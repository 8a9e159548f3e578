"""Where ``clipforge bench`` finds its suites: the top-level ``benchmarks/`` package of a clipforge clone.

The suites are not part of the installed library (they pin data sets, protocols and baselines, and write the
repository's ``benchmarks/results``), so a wheel install has the library without them. Run from a clone they
import from its root; anywhere else the bench commands say, in one line, where they live.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from clipforge.errors import ClipforgeError


def _roots() -> list[Path]:
    here = Path(__file__).resolve()
    return [Path.cwd(), here.parents[3]]  # the working directory, then the clone an editable install points at


def require_suites() -> None:
    """Make ``import benchmarks`` work, or raise one clear error."""
    try:
        importlib.import_module("benchmarks")
        return
    except ModuleNotFoundError as e:
        if e.name != "benchmarks":
            raise
    for root in _roots():
        if (root / "benchmarks" / "__init__.py").is_file():
            sys.path.insert(0, str(root))
            importlib.import_module("benchmarks")
            return
    raise ClipforgeError("the benchmark suites live in the benchmarks/ folder of a clipforge clone: "
                         "run `clipforge bench ...` from the root of a clone")


def method_list(methods: str, every: str | None) -> list[str]:
    """The comma-separated ``--methods``; ``all`` means every method of the suite (``benchmarks.leaderboard.<every>``)."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if names == ["all"] and every:
        require_suites()
        from benchmarks import leaderboard
        return list(getattr(leaderboard, every))
    return names


__all__ = ["require_suites", "method_list"]
