"""One comparison JSON from several `clipforge bench fashion-zsl` runs (the 5 development splits), one row each.

Used for the descriptions comparison (hand file / WordNet / names) and the text-tower trial (MiniLM / MPNet):
each run differs from the default by its ``--set`` overrides only, so its clipforge row becomes one row here,
renamed, with the overrides, the run's commit and the file it came from. The first row is the clipforge default,
as in every benchmark JSON (docs/benchmarks.md).

    python -m benchmarks.fashion_zsl_compare --suite fashion-zsl-descriptions --out benchmarks/results \\
        hand=benchmarks/results/fashion-zsl.json wordnet=/tmp/runs/wn/fashion-zsl.json@d1bf85e+data.descriptions=wordnet

``NAME=PATH[:METHOD][@COMMIT][+SET,SET]``: the row ``METHOD`` (default ``clipforge``) of ``PATH``, named ``NAME``;
``SET``s are the run's ``--set`` overrides (a run JSON records only the method's own).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

_SPEC = re.compile(r"(?P<name>[^=]+)=(?P<path>[^:@+]+)(?::(?P<method>[^@+]+))?(?:@(?P<commit>\w+))?"
                   r"(?:\+(?P<sets>.+))?$")


def pick_row(name: str, path: str, method: str = "clipforge", commit: str | None = None,
             sets: list[str] = ()) -> tuple[dict, dict]:
    """(row renamed ``name``, the whole run) for the ``method`` row of the run JSON at ``path``."""
    data = json.loads(Path(path).read_text())
    rows = [r for r in data["results"] if r["method"] == method]
    if not rows:
        raise SystemExit(f"{path}: no row '{method}' (rows: {[r['method'] for r in data['results']]})")
    row = dict(rows[0])
    overrides = list(row.get("overrides") or [])
    row.update(method=name, source={"file": str(path), "row": method, "commit": commit},
               overrides=overrides + [o for o in sets if o not in overrides])
    return row, data


def compare(suite: str, specs: list[str], notes: dict | None = None) -> dict:
    rows, runs = [], []
    for spec in specs:
        m = _SPEC.match(spec)
        if not m:
            raise SystemExit(f"bad row spec {spec!r}: NAME=PATH[:METHOD][@COMMIT][+SET,SET]")
        sets = [s for s in (m["sets"] or "").split(",") if s]
        row, run = pick_row(m["name"], m["path"], m["method"] or "clipforge", m["commit"], sets)
        rows.append(row)
        runs.append(run)
    first = runs[0]
    return {"suite": suite, "dataset": first.get("dataset"), "task": first.get("task"),
            "model": first.get("model"), "protocol": first.get("protocol"), "results": rows,
            "wall_seconds": round(sum(r.get("wall_seconds", 0) for r in runs), 1), "env": first.get("env"),
            **(notes or {})}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", required=True)
    ap.add_argument("--out", required=True, help="folder; writes <suite>.json")
    ap.add_argument("--notes", help="a JSON file of extra top-level fields (e.g. the log of variants tried)")
    ap.add_argument("rows", nargs="+")
    a = ap.parse_args(argv)
    notes = json.loads(Path(a.notes).read_text()) if a.notes else None
    out = Path(a.out) / f"{a.suite}.json"
    out.write_text(json.dumps(compare(a.suite, a.rows, notes), indent=2))
    print(out)
    return out


if __name__ == "__main__":
    main()
