"""Robust image decoding and skipping bad files (split from test_data.py)."""
from __future__ import annotations

import gzip
import io
import json
import random
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipforge.embed.cache import EmbeddingCache, embed_dataset
from clipforge.data import ClassDescriptions, load_descriptions, protocol_unseen, seen_unseen
from clipforge.data.dataset import SkipReport
from clipforge.data.descriptions import from_templates
from clipforge.data.fashion_mnist import CLASS_NAMES, PACKAGED_DIR, load_fashion_mnist, read_idx
from clipforge.data.folders import load_awa2, load_image_folder
from clipforge.data.images import load_image
from clipforge.errors import ConfigError
from clipforge.towers.base import ImagePreprocess, Tower


from imgutil import _jpeg_bytes, _noise  # noqa: E402


# -- bad images through the embedding step -----------------------------------------------------------

class MeanTower(Tower):
    """A tiny fake image tower: the per-channel mean of an 8x8 preprocessed image."""
    modality = "image"
    dim = 3
    tower_id = "test:mean"

    def __init__(self):
        super().__init__()
        self.pre = ImagePreprocess(size=8)

    def prepare(self, items):
        return self.pre(items)

    def preprocess_key(self):
        return self.pre.key()

    def forward(self, x):
        return x.mean((2, 3))


def _write_bad_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """class 'clean' with 2 good images, class 'broken' with 3 good and 3 bad files (+ ignored sidecars).

    'broken' sorts first, so dropping the bad files shifts later items: a label taken by position
    instead of by kept index would be wrong.
    """
    clean, mixed = root / "clean", root / "broken"
    clean.mkdir(parents=True)
    mixed.mkdir(parents=True)
    good = []
    for i in range(2):
        p = clean / f"c{i}.jpg"
        _noise(i).save(p, "JPEG")
        good.append(p)

    p = mixed / "a_good.png"
    _noise(10).save(p, "PNG")
    good.append(p)
    p = mixed / "e_rgba.png"
    _noise(11, mode="RGBA").save(p, "PNG")
    good.append(p)
    p = mixed / "f_palette.png"
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0] * (254 * 3))
    pal.paste(0, (0, 0, 8, 16))
    pal.save(p, "PNG", transparency=0)
    good.append(p)

    bad = [mixed / "b_empty.jpg", mixed / "c_text.jpg", mixed / "d_truncated.jpg"]
    bad[0].write_bytes(b"")
    bad[1].write_text("this is not an image\n")
    bad[2].write_bytes(_jpeg_bytes(3)[:100])
    # not listed at all: a sidecar and a hidden file
    (mixed / "notes.txt").write_text("hello")
    (mixed / ".DS_Store").write_bytes(b"\0\0junk")
    return good, bad


def test_bad_images_are_skipped_and_reported(tmp_path):
    good, bad = _write_bad_folder(tmp_path / "imgs")
    ds = load_image_folder(tmp_path / "imgs")
    assert ds.class_names == ["broken", "clean"]
    assert sorted(ds.images) == sorted(str(p) for p in good + bad)  # sidecars and hidden files not listed

    tower = MeanTower()
    cache = EmbeddingCache(tmp_path / "c")
    feats, labels = embed_dataset(tower, ds, cache, progress=False, batch_size=4)

    good_idx = [i for i, p in enumerate(ds.images) if Path(p) in good]
    assert labels.tolist() == ds.labels[good_idx].tolist()
    assert labels.tolist() == [0, 0, 0, 1, 1]
    assert feats.shape == (5, 3) and feats.dtype == np.float32

    # features are those of the decoded images, in dataset order
    expected = tower.encode([load_image(ds.images[i])[0] for i in good_idx])
    np.testing.assert_allclose(feats, expected, atol=1e-5)

    assert sorted(p for p, _ in ds.skipped.items) == sorted(str(p) for p in bad)
    assert len(ds.skipped) == 3
    reasons = dict(ds.skipped.items)
    assert all(isinstance(r, str) and r.strip() for r in reasons.values())
    assert reasons[str(bad[0])] == "empty file"

    out = ds.skipped.write(tmp_path / "report" / "skipped.json")
    listed = json.loads(out.read_text())
    assert sorted(e["item"] for e in listed) == sorted(str(p) for p in bad)
    assert all(e["reason"] for e in listed)

    # second run: served from the cache, and the skipped files are reported again
    ds2 = load_image_folder(tmp_path / "imgs")
    feats2, labels2 = embed_dataset(tower, ds2, cache, progress=False)
    assert cache.hits == 1 and cache.misses == 1
    np.testing.assert_array_equal(feats2, feats)
    np.testing.assert_array_equal(labels2, labels)
    assert sorted(ds2.skipped.items) == sorted(ds.skipped.items)


def test_skip_report_write_roundtrip(tmp_path):
    r = SkipReport()
    r.add(Path("/x/ünïcode.jpg"), "empty file")
    r.add("y.png", "not an image")
    assert len(r) == 2
    data = json.loads(r.write(tmp_path / "deep" / "dir" / "s.json").read_text(encoding="utf-8"))
    assert data == [{"item": "/x/ünïcode.jpg", "reason": "empty file"}, {"item": "y.png", "reason": "not an image"}]


# -- load_image --------------------------------------------------------------------------------------

def test_load_image_rgba_composites_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    arr[0, 0] = (10, 20, 30, 255)  # opaque
    arr[1, 1] = (0, 0, 0, 128)  # half-transparent black
    arr[2, 2] = (200, 0, 0, 0)  # transparent, coloured
    p = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(p)
    img, reason = load_image(p)
    assert reason is None and img.mode == "RGB"
    out = np.asarray(img)
    assert out[3, 3].tolist() == [255, 255, 255]
    assert out[2, 2].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [10, 20, 30]
    half = 255 * (1 - 128 / 255)
    assert np.all(np.abs(out[1, 1].astype(float) - half) <= 1.0)


def test_load_image_palette_transparency_composites_on_white(tmp_path):
    good, _ = _write_bad_folder(tmp_path / "imgs")
    img, reason = load_image(good[-1])  # f_palette.png: left half transparent index 0, right half red
    assert reason is None and img.mode == "RGB"
    out = np.asarray(img)
    assert out[5, 2].tolist() == [255, 255, 255]
    assert out[5, 12].tolist() == [200, 30, 30]


def test_load_image_16bit_png(tmp_path):
    arr = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(arr).save(p)
    with Image.open(p) as raw:
        assert raw.mode.startswith("I")
    img, reason = load_image(p)
    assert reason is None and img.mode == "RGB"
    out = np.asarray(img)
    assert out.shape == (2, 2, 3)
    assert out[1, 1].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [0, 0, 0]
    assert abs(int(out[1, 0, 0]) - 30000 / 65535 * 255) <= 1


def test_load_image_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(p, "JPEG", quality=95)  # pure cyan
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    img, reason = load_image(p)
    assert reason is None and img.mode == "RGB"
    r, g, b = np.asarray(img)[4, 4].astype(int)
    assert r < 30 and g > 225 and b > 225


def test_load_image_exif_rotation(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(p, "JPEG", exif=exif.tobytes(), quality=95)
    with Image.open(p) as raw:
        assert raw.size == (40, 20)
    img, reason = load_image(p)
    assert reason is None
    assert img.size == (20, 40)
    out = np.asarray(img).astype(int)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # the left edge is now on top: red
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60  # bottom: blue


def test_load_image_failures_return_reasons(tmp_path):
    img, reason = load_image(tmp_path / "missing.png")
    assert img is None and reason == "file not found"
    p = tmp_path / "tiny.png"
    _noise(0, size=4).save(p)
    img, reason = load_image(p, min_side=8)
    assert img is None and "too small" in reason and "4x4" in reason
    img, reason = load_image(io.BytesIO(_jpeg_bytes(1)))
    assert reason is None and img.size == (16, 16)




def test_bomb_is_refused_even_when_another_thread_reset_the_warnings_filter(tmp_path, monkeypatch):
    """Warnings filters are process-wide: a decoding thread pool can see them reset by another thread mid-call
    (how a 12000 x 12000 PNG once slipped through CI). The pixel limit must not depend on them."""
    import warnings
    from clipforge.data import images
    path = tmp_path / "bomb.png"
    Image.new("1", (1, 1)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 0)          # every image is "too large" now; PIL's own check is off
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    monkeypatch.setattr(warnings, "simplefilter", lambda *a, **k: None)   # the filter "reset" by someone else
    img, reason = load_image(path)
    assert img is None and "too large" in reason
