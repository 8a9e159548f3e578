"""Finding the report's inputs under a folder, and tidying them so that a partial file draws what it has.

A benchmark JSON is ``{"suite", "results": [{"method", "metrics", ...}], ...}``; a run folder has a
``results.json`` with ``metrics`` and/or TensorBoard event files. A JSON that looks like a benchmark but cannot be
used is named, with the reason, in a :class:`~clipforge.data.dataset.SkipReport` that the page shows: the report
of a long benchmark run must never die on one odd file.
"""
from __future__ import annotations

import json
from pathlib import Path

from clipforge.data.dataset import SkipReport

MAX_JSON_BYTES = 64 * 1024 * 1024


def _read_json(path: Path, skipped: SkipReport | None = None):
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            if skipped is not None:
                skipped.add(path, f"larger than {MAX_JSON_BYTES >> 20} MiB")
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        if skipped is not None:
            skipped.add(path, f"not readable as JSON ({type(e).__name__})")
        return None


def is_benchmark(data) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("results"), list)
            and all(isinstance(r, dict) and "method" in r for r in data["results"]))


def _row(r: dict) -> dict:
    """A result row whose ``metrics`` and ``std`` are dicts whatever the file held (a partial JSON draws what
    it has)."""
    out = dict(r)
    for key in ("metrics", "std"):
        out[key] = r[key] if isinstance(r.get(key), dict) else {}
    return out


def salvage(path: Path, data, skipped: SkipReport) -> dict | None:
    """A benchmark-like JSON that ``is_benchmark`` refused, made usable where honest, else noted in ``skipped``:
    rows without a ``method`` are left out (and counted); a suite file with one top-level ``metrics`` dict (install
    size, mutation score) becomes a one-row suite. Any other JSON (configs, caches) is not a benchmark: ignored."""
    if not isinstance(data, dict):
        return None
    results = data.get("results")
    if isinstance(results, list):
        rows = [r for r in results if isinstance(r, dict) and "method" in r]
        if len(rows) < len(results):
            skipped.add(path, f"{len(results) - len(rows)} of {len(results)} result rows have no 'method': left out")
        if rows:
            return {**data, "results": rows}
        skipped.add(path, "no result row with a 'method'")
        return None
    if isinstance(data.get("metrics"), dict) and ("suite" in data or "task" in data):
        method = data.get("model") or data.get("tool") or data.get("suite") or path.stem
        return {**data, "suite": data.get("suite") or path.stem,
                "results": [{"method": str(method), "metrics": data["metrics"]}]}
    if "suite" in data or "results" in data:
        skipped.add(path, "'results' is not a list of {method, metrics} rows")
    return None


def scan(directory: Path) -> tuple[list[tuple[Path, dict]], list[dict], SkipReport]:
    """(benchmark JSONs with tidy rows, runs, files left out and why). A run is
    ``{"dir", "results" (dict or None), "tb": [event dirs]}``."""
    benches, run_results, tb_dirs, skipped = [], {}, set(), SkipReport()
    for path in sorted(directory.rglob("*.json")):
        data = _read_json(path, skipped)
        if is_benchmark(data):
            benches.append((path, {**data, "results": [_row(r) for r in data["results"]]}))
        elif path.name == "results.json" and isinstance(data, dict) and isinstance(data.get("metrics"), dict):
            run_results[path.parent] = data
        elif (fixed := salvage(path, data, skipped)) is not None:
            benches.append((path, {**fixed, "results": [_row(r) for r in fixed["results"]]}))
    for ev in directory.rglob("events.out.tfevents.*"):
        tb_dirs.add(ev.parent)
    runs: dict[Path, dict] = {d: {"dir": d, "results": r, "tb": []} for d, r in run_results.items()}
    for tb in sorted(tb_dirs):
        owner = next((a for a in [tb, *tb.parents] if a in runs), None)
        if owner is None:
            owner = tb.parent if tb.name == "tb" else tb
            runs.setdefault(owner, {"dir": owner, "results": None, "tb": []})
        runs[owner]["tb"].append(tb)
    return benches, [runs[k] for k in sorted(runs)], skipped


def discover(directory: Path) -> tuple[list[tuple[Path, dict]], list[dict]]:
    """(benchmark JSONs, runs), without the notes of :func:`scan`."""
    benches, runs, _ = scan(directory)
    return benches, runs
