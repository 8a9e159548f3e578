"""The layout reads as the pipeline, and stays that way: checked on the source, so a change that breaks it fails here.

- no import circle between modules (module-level and lazy imports alike);
- no loose top-level module besides the package face, its ``__main__``, ``config`` and ``errors``;
- no module imports another module's private (``_name``) members;
- the library never imports the benchmark suites (they live outside the package);
- every module imports on its own in a fresh interpreter (catches init-order circles through package ``__init__``s).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "src" / "clipforge"
TOP_LEVEL_ALLOWED = {"__init__", "__main__", "config", "errors"}
FOLDERS = ["data", "towers", "embed", "model", "losses", "train", "pipelines", "evaluate", "index", "serve", "cli",
           "util"]


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path):
    """(imported module, imported names) for every clipforge import in the file, wherever it is."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for module, names in _imports(path):
            if not (module == "clipforge" or module.startswith("clipforge.")):
                continue
            for n in names or [None]:
                full = f"{module}.{n}" if n else module
                target = full if full in MODULES else _resolve(module)
                if target and target != name and target != "clipforge":
                    deps.add(target)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_loose_top_level_modules_and_the_folders_are_there():
    loose = {p.stem for p in PKG.glob("*.py")} - TOP_LEVEL_ALLOWED
    assert not loose, f"put these in the folder of their pipeline stage: {sorted(loose)}"
    for folder in FOLDERS:
        assert (PKG / folder / "__init__.py").is_file(), folder
    assert not (PKG / "bench").exists(), "the benchmark suites live in the top-level benchmarks/ package"


def test_no_module_reaches_into_another_modules_private_names():
    offenders = []
    for name, path in MODULES.items():
        for module, names in _imports(path):
            if not module.startswith("clipforge"):
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__") and module != name:
                    offenders.append(f"{name} imports {module}.{n}")
    assert not offenders, offenders


def test_the_library_never_imports_the_benchmarks():
    offenders = [name for name, path in MODULES.items() for module, _ in _imports(path)
                 if (module == "benchmarks" or module.startswith("benchmarks."))
                 and not name.startswith("clipforge.cli")]
    assert not offenders, f"only the bench CLI commands may load benchmarks/: {offenders}"


def test_every_module_imports_on_its_own():
    names = sorted(n for n in MODULES if not n.endswith("__main__"))
    code = ("import importlib, sys\nbad = []\nfor n in %r:\n"
            "    for k in [k for k in sys.modules if k == 'clipforge' or k.startswith('clipforge.')]:\n"
            "        del sys.modules[k]\n"
            "    try:\n        importlib.import_module(n)\n"
            "    except Exception as e:\n        bad.append(f'{n}: {e!r}')\n"
            "print('\\n'.join(bad))\nsys.exit(1 if bad else 0)\n") % names
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
