"""Write requirements/constraints.txt: the exact version of every package clipforge[all,test] pulls in.

pyproject.toml states compatible ranges (what a library may ask of a user's environment); this lock states what
CI, the benchmarks and the README commands actually ran with, so a fresh clone installs the same thing.
Run it after changing a dependency, in an environment where `pip install -e ".[all,test]"` succeeded:

    python3 scripts/lock.py            # rewrite the lock from the installed versions
    python3 scripts/lock.py --check    # exit 1 if an installed version differs from the lock
"""
from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements" / "constraints.txt"
ROOT_EXTRAS = ("all", "test")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = "clipforge", extras: tuple[str, ...] = ROOT_EXTRAS) -> dict[str, str]:
    """Every installed distribution reachable from ``root[extras]``, with its installed version."""
    seen: dict[str, str] = {}
    visited: set[tuple[str, frozenset]] = set()
    todo = [(root, set(extras))]
    while todo:
        name, wanted = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency of a dependency (an environment marker not met here)
        key = canonical(dist.metadata["Name"])
        if (key, frozenset(wanted)) in visited:
            continue
        visited.add((key, frozenset(wanted)))
        # A local label (torch 2.13.0+cpu) is dropped: `==2.13.0` accepts the CPU build where an index has it,
        # and the README says which index serves it.
        seen[key] = dist.version.split("+")[0]
        for req in dist.requires or []:
            spec, _, marker = req.partition(";")
            dep = re.match(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?", spec)
            if not dep:
                continue
            if marker.strip() and not _marker_ok(marker, wanted):
                continue
            dep_extras = set(x.strip() for x in (dep.group(2) or "[]")[1:-1].split(",") if x.strip())
            if canonical(dep.group(1)) == key:  # clipforge[all] names clipforge's own extras
                if dep_extras - wanted:
                    todo.append((name, wanted | dep_extras))
                continue
            todo.append((dep.group(1), dep_extras))
    seen.pop(canonical(root), None)
    return dict(sorted(seen.items()))


def _marker_ok(marker: str, extras: set[str]) -> bool:
    from packaging.markers import Marker  # packaging ships with pip's vendored copy and with setuptools
    m = Marker(marker)
    return any(m.evaluate({"extra": e}) for e in (extras or {""})) if "extra" in marker else m.evaluate({"extra": ""})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    pins = closure()
    text = ("# Exact versions CI and the benchmarks ran with (python3 scripts/lock.py writes this file).\n"
            "# scripts/install.sh installs with `-c requirements/constraints.txt`; pyproject.toml keeps ranges.\n"
            + "".join(f"{k}=={v}\n" for k, v in pins.items()))
    if args.check:
        old = LOCK.read_text() if LOCK.is_file() else ""
        if old != text:
            sys.stderr.write("requirements/constraints.txt differs from the installed versions\n")
            return 1
        return 0
    LOCK.write_text(text)
    print(f"wrote {LOCK} ({len(pins)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
