"""clipforge as a released package: metadata that tells the truth, the lock, and a wheel that works outside the repo.

The wheel is built once per session (pip, no build isolation: a second or two) and installed into a fresh
virtualenv that sees the already installed dependencies (``--system-site-packages``, the wheel with
``--no-deps``), so this checks the package's own files (configs, data files, entry point, licence) and not the
network. The size of a core-only install is measured by ``benchmarks/install_size.py`` (a benchmark, not a test).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from captionutil import make_caption_set

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "requirements" / "constraints.txt"


def _pip(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT))
    assert r.returncode == 0, r.stderr
    (path,) = out.glob("clipforge-*.whl")
    return path


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return z.read(name).decode()


def test_wheel_metadata_says_python_311_licence_and_extras(wheel):
    meta = _metadata(wheel)
    assert re.search(r"^Requires-Python: >=3\.11$", meta, re.M), meta[:600]
    assert re.search(r"^License-Expression: MIT$", meta, re.M)
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE is not in the wheel"
    assert "clipforge/configs/caption-train.yaml" in names and "clipforge/serve/static/index.html" in names
    assert not [n for n in names if n.startswith("benchmarks/")], "the benchmark suites are not part of the library"
    extras = set(re.findall(r"^Provides-Extra: (\S+)$", meta, re.M))
    assert {"serve", "report", "multilingual", "onnx", "tensorboard", "scale", "augment", "all"} <= extras


def test_dependencies_are_ranges_and_the_lock_pins_every_one_of_them():
    deps = PYPROJECT["project"]["dependencies"] + [d for ds in PYPROJECT["project"]["optional-dependencies"].values()
                                                    for d in ds]
    pinned = [d for d in deps if "==" in d]
    assert not pinned, f"exact pins belong in the lock, not the package metadata: {pinned}"
    lock = dict(line.split("==") for line in LOCK.read_text().splitlines() if line and not line.startswith("#"))
    for d in deps:
        name = re.match(r"[A-Za-z0-9_.\-]+", d).group(0)
        if name == "clipforge":
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        assert key in lock, f"{name} is a dependency but not in requirements/constraints.txt"


def test_the_lock_matches_what_is_installed():
    # scripts/install.sh installs from the lock: a lock that drifted from the tested environment would lie
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "lock.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_python_310_is_refused_for_a_reason(tmp_path):
    """requires-python says >= 3.11 because the locked releases need it: on 3.10 the lock does not resolve."""
    args = ["install", "--dry-run", "--no-deps", "--ignore-installed", "--target", str(tmp_path), "--only-binary=:all:",
            "-r", str(LOCK)]
    old = _pip(*args, "--python-version", "3.10")
    assert old.returncode != 0 and "Requires-Python >=3.11" in old.stderr, old.stderr[-800:]
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


def test_extras_named_in_code_are_the_ones_in_pyproject():
    from clipforge.util.extras import EXTRAS
    declared = PYPROJECT["project"]["optional-dependencies"]
    for extra, dists in EXTRAS.items():
        assert extra in declared, extra
        names = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", d).group(0)).lower() for d in declared[extra]}
        assert names == {re.sub(r"[-_.]+", "-", d).lower() for d in dists}, (extra, names)
    assert set(declared) - set(EXTRAS) == {"all", "test"}
    assert declared["all"] == [f"clipforge[{','.join(EXTRAS)}]"]


@pytest.fixture(scope="module")
def wheel_venv(wheel, tmp_path_factory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                        "--disable-pip-version-check", str(wheel)], capture_output=True, text=True)
    if "no such option: --python" in r.stderr:  # pip < 22.3: use the venv's own module path instead
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                            str(next((env_dir / "lib").glob("python3.*")) / "site-packages"), str(wheel)],
                           capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return env_dir


def _run_outside(env_dir: Path, cwd: Path, *args, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(HF_HUB_OFFLINE="1", CLIPFORGE_CACHE=str(cwd / "cache"), PATH=f"{env_dir / 'bin'}:{env['PATH']}")
    return subprocess.run([str(env_dir / "bin" / "clipforge"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_wheel_trains_and_classifies_from_outside_the_repository(wheel_venv, tmp_path):
    where = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", "import clipforge; print(clipforge.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert str(wheel_venv) in where.stdout, f"the wheel's clipforge is not the one imported: {where.stdout}{where.stderr}"
    assert _run_outside(wheel_venv, tmp_path, "--help").returncode == 0

    csv = make_caption_set(tmp_path / "shapes", copies=2)
    out = tmp_path / "run"
    r = _run_outside(wheel_venv, tmp_path, "train", "-c", "caption-train", "--quiet", "--set", f"data.source=csv:{csv}",
                     "--set", "train.epochs=2", "--set", "train.ensemble=1", "--set", "towers.image_size=64",
                     "--set", "data.folds=4", "--set", f"out={out}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "model" / "model.safetensors").is_file()
    assert "Loading weights" not in r.stderr, "a local model load printed its progress bar"
    assert not (tmp_path / ".cache").exists(), "features were cached in the working directory"
    assert any((tmp_path / "cache" / "features").iterdir()), "features were not cached in CLIPFORGE_CACHE"

    img = csv.parent / "images" / "red_circle_0.png"
    r = _run_outside(wheel_venv, tmp_path, "classify", str(out / "model"), str(img), "--labels", "circle,square,triangle")
    assert r.returncode == 0, r.stdout + r.stderr
    top = json.loads(r.stdout.strip().splitlines()[-1])["top"]
    assert {label for label, _ in top} == {"circle", "square", "triangle"} and top[0][1] >= top[-1][1]
