"""Mutation testing of clipforge's core with mutmut: do the fast unit tests notice a plausible one-line bug?

A line coverage number says a line ran; a mutation run says a test would FAIL if that line were wrong. mutmut
changes one operator / constant / call at a time in the modules below and runs only the fast unit tests that
reach the changed function; a mutant that no test fails on "survived". Issue 16 asks for at most 10 % survivors,
each either killed by a test or explained as equivalent (``benchmarks/mutation_equivalents.json``).

Why a copy: mutmut writes ``mutants/`` (a full copy of src/ and tests/ plus its state) in the folder it runs in,
and other people run the test suite on the working tree at the same time. So the working tree's src/ and tests/
are copied to ``--workdir`` (default: a folder under the system temp dir), mutmut's config is written there as a
setup.cfg, and nothing under the repository is touched except the result JSON.

    bash scripts/mutation.sh                       # every module below, one worker, nice 15; ~30 min on one core
    bash scripts/mutation.sh --modules losses,heads
    bash scripts/mutation.sh --keep                # reuse the previous run's mutants/ (mutmut re-tests what changed)

Writes ``benchmarks/results/mutation.json``: metrics.killed / metrics.survived (counts over the mutants of the
selected modules), per-module counts, and every survivor with module, line, the mutation as a diff and, where
known, why it is equivalent. Not part of CI's default run: it takes tens of minutes.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "mutation.json"
EQUIVALENTS = ROOT / "benchmarks" / "mutation_equivalents.json"
MUTMUT_VERSION = "3.8.1"   # the state files read below are mutmut 3.8's; another version may lay them out otherwise

# module -> (file, mutant name patterns). Index digests: the content-hash functions only (embed_items and
# image_size need a model and an image tower, which the fast tests do not have).
MODULES = {
    "losses": ("src/clipforge/losses/functional.py", ["clipforge.losses.functional.*"]),
    "objective": ("src/clipforge/losses/objective.py", ["clipforge.losses.objective.*"]),
    "heads": ("src/clipforge/model/heads.py", ["clipforge.model.heads.*"]),
    "zeroshot": ("src/clipforge/evaluate/zeroshot.py", ["clipforge.evaluate.zeroshot.*"]),
    "retrieval": ("src/clipforge/evaluate/retrieval.py", ["clipforge.evaluate.retrieval.*"]),
    "baselines": ("src/clipforge/evaluate/baselines.py", ["clipforge.evaluate.baselines.*"]),
    "index-digests": ("src/clipforge/index/embedding.py",
                      ["clipforge.index.embedding.x_file_digest__*", "clipforge.index.embedding.x_digest_items__*"]),
    "captions": ("src/clipforge/data/captions.py", ["clipforge.data.captions.*"]),
}

# The fast unit tests of those modules (each well under 2 s; together ~10 s). mutmut runs, for each mutant,
# only those of them that call the mutated function.
TESTS = [
    "tests/test_heads_losses.py",
    "tests/test_objective.py",
    "tests/test_mutation_guards.py",
    "tests/test_losses_values.py",
    "tests/test_heads_values.py",
    "tests/test_heads_batched.py",
    "tests/test_heads_batched_guards.py",
    "tests/test_structure.py",
    "tests/test_objective_paths.py",
    "tests/test_csa.py",
    "tests/test_wds.py::test_load_wds_is_a_caption_dataset_reused_while_the_shards_are_unchanged",
    "tests/test_wds.py::test_captions_from_a_json_field_and_images_without_captions",
    "tests/test_wds.py::test_a_wds_caption_source_reads_the_configured_field",
    "tests/test_zeroshot_values.py",
    "tests/test_retrieval_values.py",
    "tests/test_baselines_values.py",
    "tests/test_captions_values.py",
    "tests/test_gzsl_calibration.py",
    "tests/test_retrieval_objective.py",
    "tests/test_baselines_leaderboard.py",
    "tests/test_captions_data.py",
    "tests/test_captions_rows.py",
    "tests/test_gauntlet_parsers.py",
]
# Deterministic property tests (hypothesis), no cache writes into the copy, warnings as they are.
PYTEST_ARGS = ["-p", "no:cacheprovider", "--hypothesis-seed=0"]


def _copy_tree(dst: Path) -> None:
    """The working tree's src/ and tests/ (tracked and untracked, not ignored) into ``dst``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", "src", "tests"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _copy_benchmarks(dst: Path) -> None:
    """The top-level ``benchmarks`` package's modules (some tests import it, e.g. benchmarks.leaderboard) into
    ``dst/benchmarks``, which goes on the tests' PYTHONPATH: mutmut's mutants/ copy holds only src/ and tests/."""
    shutil.rmtree(dst, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", "benchmarks/*.py"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        if (ROOT / rel).is_file() and "/" not in rel[len("benchmarks/"):]:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)


def _setup_cfg(modules: list[str]) -> str:
    def lines(xs):
        return "".join(f"\n    {x}" for x in xs)
    return ("[mutmut]\n"
            "source_paths = src\n"
            f"only_mutate ={lines(MODULES[m][0] for m in modules)}\n"
            f"pytest_add_cli_args_test_selection ={lines(TESTS)}\n"
            f"pytest_add_cli_args ={lines(PYTEST_ARGS)}\n")


def prepare(workdir: Path, modules: list[str], keep: bool) -> None:
    if workdir.exists() and not keep:
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for old in ("src", "tests"):                       # fresh sources either way; mutants/ stays with --keep
        shutil.rmtree(workdir / old, ignore_errors=True)
    _copy_tree(workdir)
    _copy_benchmarks(workdir / "pkgs")
    (workdir / "setup.cfg").write_text(_setup_cfg(modules))


def run_mutmut(workdir: Path, modules: list[str]) -> tuple[int, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "CLIPFORGE_SKIP_BROWSER": "1", "PYTHONPATH": str(workdir / "pkgs")}
    patterns = [p for m in modules for p in MODULES[m][1]]
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", "1", *patterns]
    t0 = time.time()
    with open(workdir / "mutmut.log", "w") as log:     # mutmut's progress line is redrawn per mutant: keep it out
        rc = subprocess.run(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        print((workdir / "mutmut.log").read_text()[-3000:], file=sys.stderr)
    return rc, time.time() - t0


def _diff(workdir: Path, name: str, path: str) -> str:
    """The mutation as a unified diff of its function (mutmut's own `mutmut show`, in this process: ~1 s less each)."""
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant
        cwd = os.getcwd()
        os.chdir(workdir)
        try:
            return get_diff_for_mutant(name, path=Path(path))
        finally:
            os.chdir(cwd)
    except Exception:  # noqa: BLE001 - another mutmut layout: ask its CLI
        pass
    out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=workdir, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": ""}).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("# "))


def _function_lines(source: str) -> dict[str, int]:
    """mutmut's mangled function name (x_f, xǁClassǁmethod) -> first line of its def in the original file."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[f"x_{node.name}"] = node.lineno
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out[f"xǁ{node.name}ǁ{item.name}"] = item.lineno
    return out


def _line_of(source: str, start: int, diff: str) -> int | None:
    """The line in the original file that the mutation changes: the first '-' line of the diff, searched for
    from the function's def on."""
    removed = [ln[1:] for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    if not removed:
        return None
    lines = source.splitlines()
    want = removed[0].strip()
    for i in range(start - 1, len(lines)):
        if lines[i].strip() == want:
            return i + 1
    return None


def _changed(diff: str) -> tuple[str, str]:
    minus = " ".join(ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---"))
    plus = " ".join(ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    return minus, plus


def collect(workdir: Path, modules: list[str]) -> dict:
    """Statuses from mutmut's per-file state (mutants/<file>.meta), survivors with their diffs."""
    import fnmatch
    from mutmut.stats import status_by_exit_code
    equivalents = json.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.is_file() else []
    per_module, survivors = {}, []
    for m in modules:
        path, patterns = MODULES[m]
        meta = json.loads((workdir / "mutants" / f"{path}.meta").read_text())
        source = (workdir / path).read_text()
        starts = _function_lines(source)
        counts: dict[str, int] = {}
        for name, code in sorted(meta["exit_code_by_key"].items(), key=lambda kv: _natural(kv[0])):
            if not any(fnmatch.fnmatch(name, p) for p in patterns):
                continue
            status = status_by_exit_code[code]
            counts[status] = counts.get(status, 0) + 1
            if status in ("killed", "timeout", "segfault", "caught by type check"):
                continue
            diff = _diff(workdir, name, path)
            func = name.split(".")[-1].split("__mutmut_")[0]
            minus, plus = _changed(diff)
            why = next((e["reason"] for e in equivalents
                        if e["module"] == m and e["function"] == func and e["from"] == minus and e["to"] == plus), None)
            survivors.append({"module": m, "file": path, "mutant": name, "function": func, "status": status,
                              "line": _line_of(source, starts.get(func, 1), diff), "diff": diff,
                              "equivalent": why})
        per_module[m] = counts
    return {"per_module": per_module, "survivors": survivors}


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", default=",".join(MODULES), help=f"comma-separated subset of {', '.join(MODULES)}")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "clipforge-mutation")
    ap.add_argument("--keep", action="store_true", help="reuse the previous run's mutants/ in --workdir")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = sorted(set(modules) - set(MODULES))
    if unknown:
        ap.error(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)}")
    from importlib.metadata import version
    if version("mutmut") != MUTMUT_VERSION:
        print(f"note: mutmut {version('mutmut')} is installed, this script reads mutmut {MUTMUT_VERSION}'s state",
              file=sys.stderr)
    workdir = args.workdir.resolve()
    if ROOT in (workdir, *workdir.parents):
        ap.error("--workdir must be outside the repository (mutmut writes mutants/ there)")
    prepare(workdir, modules, args.keep)
    rc, wall = run_mutmut(workdir, modules)
    res = collect(workdir, modules)
    totals: dict[str, int] = {}
    for counts in res["per_module"].values():
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    killed = sum(totals.get(k, 0) for k in ("killed", "timeout", "segfault", "caught by type check"))
    survived = len(res["survivors"])
    n = killed + survived
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out = {
        "suite": "mutation",
        "tool": f"mutmut {version('mutmut')}",
        "command": "bash scripts/mutation.sh " + " ".join(argv if argv is not None else sys.argv[1:]),
        "modules": {m: MODULES[m][0] for m in modules},
        "tests": TESTS,
        "metrics": {"killed": killed, "survived": survived, "total": n,
                    "survived_fraction": round(survived / n, 4) if n else None,
                    "survived_not_explained": sum(1 for s in res["survivors"] if not s["equivalent"]),
                    "by_status": totals},
        "per_module": res["per_module"],
        "survivors": res["survivors"],
        "wall_seconds": round(wall, 1),
        "mutmut_exit_code": rc,
        "env": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "max_children": 1,
                "git_head": git, "working_tree": "src/ and tests/ as they were on disk, uncommitted edits included"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if rc != 0 or n == 0:  # a broken run (mutmut failed, or no mutant ran) must not replace the last good JSON
        failed = args.out.with_name(args.out.stem + ".failed.json")
        failed.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
        print(f"mutation: mutmut exited {rc} with {n} mutants; {args.out} kept, this run is in {failed}")
        return rc or 1
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"mutation: {killed} killed, {survived} survived of {n} "
          f"({out['metrics']['survived_not_explained']} not explained) in {wall:.0f} s -> {args.out}")
    return 0 if rc == 0 else rc


if __name__ == "__main__":
    sys.exit(main())
