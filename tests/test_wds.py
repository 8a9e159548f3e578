"""wds: shards. Unit: every kind of bad sample or shard is skipped and counted for its shard, captions come from
.txt or a .json field, patterns expand or fail with one error. End to end: Tux Paint stamps served over loopback,
fetched by clipforge download (img2dataset) into shards, trained on as wds: -> the same retrieval MR as the same
pairs read from a caption CSV."""
import csv
import io
import json
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from clipforge.config import CaptionRunConfig, build_config
from clipforge.data.captions import load_caption_source
from clipforge.data.dataset import SkipReport
from clipforge.data.download import DownloadSettings, download
from clipforge.data.images import load_image
from clipforge.data.tux_paint import STAMPS_DIR, parse_stamp_text
from clipforge.data.wds import iter_samples, list_shards, load_wds, skips_per_shard
from clipforge.errors import ClipforgeError
from clipforge.pipelines import captions as caption


def _png(colour, mode="RGBA", size=(24, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def shards(tmp_path):
    """00000.tar: one good sample and one of each bad kind; 00001.tar: 6 good samples, cut in the caption of the
    4th; 00002.tar: not a tar at all. 00003.tar is missing."""
    with wds.TarWriter(str(tmp_path / "00000.tar")) as w:
        w.write({"__key__": "good", "png": _png((255, 0, 0, 128)), "txt": "a  red\nsquare ",
                 "json": json.dumps({"caption": "from json"}).encode()})
        w.write({"__key__": "nocaption", "png": _png((0, 0, 0, 255))})
        w.write({"__key__": "emptycaption", "png": _png((0, 0, 0, 255)), "txt": " \n "})
        w.write({"__key__": "noimage", "txt": "a caption without its image"})
        w.write({"__key__": "undecodable", "jpg": b"\xff\xd8\xff not really a jpeg", "txt": "broken"})
        w.write({"__key__": "notutf8", "png": _png((0, 0, 0, 255)), "txt": b"caf\xe9"})
    with wds.TarWriter(str(tmp_path / "full.tar")) as w:
        for i in range(6):
            w.write({"__key__": f"k{i}", "png": _png((0, 0, 40 * i, 255), size=(64, 64)), "txt": f"blue {i}"})
    data = (tmp_path / "full.tar").read_bytes()
    with tarfile.open(tmp_path / "full.tar") as t:
        cut = t.getmember("k3.txt").offset_data + 2            # inside the 4th sample's caption, after its image
    (tmp_path / "00001.tar").write_bytes(data[:cut])
    (tmp_path / "full.tar").unlink()
    (tmp_path / "00002.tar").write_bytes(b"this is not a tar file\n" * 40)
    return tmp_path


def test_bad_samples_and_shards_are_skipped_and_counted_per_shard(shards):
    report = SkipReport()
    got = list(iter_samples(f"wds:{shards}/{{00000..00003}}.tar", report))
    assert [(s.key, s.caption) for s in got] == [("good", "a red square"), ("k0", "blue 0"), ("k1", "blue 1"),
                                                 ("k2", "blue 2")]
    # alpha composited on white, exactly as clipforge decodes the same PNG from a file
    assert got[0].image.mode == "RGB" and got[0].image.getpixel((0, 0)) == (255, 127, 127)
    assert np.array_equal(np.asarray(got[0].image), np.asarray(load_image(io.BytesIO(_png((255, 0, 0, 128))))[0]))
    why = dict(report.items)
    assert set(why) == {"00000.tar:nocaption", "00000.tar:emptycaption", "00000.tar:noimage", "00000.tar:undecodable",
                        "00000.tar:notutf8", "00001.tar:k3", "00001.tar", "00002.tar", "00003.tar"}
    assert "no caption" in why["00000.tar:nocaption"] and why["00000.tar:emptycaption"] == "empty caption"
    assert "no image" in why["00000.tar:noimage"] and "does not decode" in why["00000.tar:undecodable"]
    assert "UTF-8" in why["00000.tar:notutf8"] and "truncated" in why["00001.tar:k3"]
    assert "truncated or unreadable" in why["00001.tar"] and "truncated or unreadable" in why["00002.tar"]
    assert "not found" in why["00003.tar"]
    assert skips_per_shard(report) == {"00000.tar": 5, "00001.tar": 2, "00002.tar": 1, "00003.tar": 1}


def test_captions_from_a_json_field_and_images_without_captions(shards):
    report = SkipReport()
    got = list(iter_samples([str(shards / "00000.tar")], report, caption_field="caption"))
    assert [(s.key, s.caption) for s in got] == [("good", "from json")]
    assert skips_per_shard(report) == {"00000.tar": 5}
    kept = list(iter_samples([str(shards / "00000.tar")], SkipReport(), require_caption=False))
    assert [s.key for s in kept] == ["good", "nocaption", "emptycaption", "notutf8"]


def test_shard_specs_expand_or_fail_with_one_error(shards, tmp_path):
    all4 = [str(shards / f"0000{i}.tar") for i in range(4)]
    assert list_shards(f"wds:{shards}/{{00000..00003}}.tar") == all4          # a named missing one stays: reported
    assert list_shards(f"wds:{shards}") == all4[:3] and list_shards(str(shards / "00001.tar")) == [all4[1]]
    assert list_shards(f"wds:{shards}/0000[12].tar") == all4[1:3]
    for spec, field in [(f"wds:{tmp_path}/{{10..12}}.tar", "{10..12}"), ("wds:", "empty"),
                        ("wds:pipe:cat /etc/passwd", "local files"), ("wds:https://x/{0..3}.tar", "local files")]:
        with pytest.raises(ClipforgeError, match="local files" if field == "local files" else "wds") as e:
            list_shards(spec)
        assert field in str(e.value) or field == "empty"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipforgeError, match="no .tar"):
        list_shards(f"wds:{tmp_path / 'empty'}")


def test_load_wds_is_a_caption_dataset_reused_while_the_shards_are_unchanged(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPFORGE_DATA", str(tmp_path / "data"))
    ds = load_caption_source(f"wds:{shards}/{{00000..00002}}.tar")
    assert ds.captions == [["a red square"], ["blue 0"], ["blue 1"], ["blue 2"]] and len(ds.skipped) == 8
    assert all(p.is_file() and str(p).startswith(str(tmp_path / "data")) for p in ds.paths)
    stamp = [p.stat().st_mtime_ns for p in ds.paths]
    again = load_wds(f"wds:{shards}/{{00000..00002}}.tar")
    assert again.paths == ds.paths and [p.stat().st_mtime_ns for p in again.paths] == stamp     # not rewritten
    assert again.skipped.items == ds.skipped.items and again.fingerprint() == ds.fingerprint()
    with wds.TarWriter(str(shards / "00002.tar")) as w:                                      # a shard changes
        w.write({"__key__": "z", "png": _png((0, 9, 0, 255)), "txt": "green"})
    assert load_wds(f"wds:{shards}/{{00000..00002}}.tar").captions[-1] == ["green"]


# -- end to end: download -> shards -> train, against the same pairs as a CSV ------------------------------------

N_STAMPS = 40


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def _stamps() -> list[tuple[Path, str]]:
    out = []
    for png in sorted(STAMPS_DIR.rglob("*.png")):
        txt = png.with_suffix(".txt")
        if "_mirror" in png.stem or not txt.is_file():
            continue
        english, _ = parse_stamp_text(txt.read_text(encoding="utf-8", errors="replace"))
        if english and 16 <= min(Image.open(png).size) and max(Image.open(png).size) <= 300:
            out.append((png, english))
    return out[::max(1, len(out) // N_STAMPS)][:N_STAMPS]


def test_downloaded_shards_train_to_the_same_mr_as_the_csv_of_the_same_pairs(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPFORGE_DATA", str(tmp_path / "data"))
    stamps = _stamps()
    assert len(stamps) == N_STAMPS
    site = tmp_path / "site"
    site.mkdir()
    for i, (p, _) in enumerate(stamps):
        (site / f"stamp-{i}.png").write_bytes(p.read_bytes())
    (site / "cut.png").write_bytes(stamps[0][0].read_bytes()[:400])                 # a PNG cut short
    (site / "notes.png").write_text("not an image, whatever the name says")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    rows = [(f"{base}/stamp-{i}.png", c) for i, (_, c) in enumerate(stamps)]
    rows[5:5] = [(f"{base}/cut.png", "cut"), (f"{base}/notes.png", "notes")]
    rows[20:20] = [(f"{base}/missing-{i}.png", f"missing {i}") for i in range(4)]
    with open(tmp_path / "urls.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("url", "caption"), *rows])
    try:
        report = download(tmp_path / "urls.csv", tmp_path / "shards", progress=False,
                          settings=DownloadSettings(workers=8, timeout=5, retries=0, min_side=16, image_format="png",
                                                    shard_size=16))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert report.ok == N_STAMPS and report.failed == 6 and report.shards == 3, report.summary()

    # the same pairs as a caption CSV over the original files, in the list's order
    kept = sorted((r for p in sorted((tmp_path / "shards").glob("0*.parquet")) for r in pq.read_table(p).to_pylist()
                   if r["status"] == "success"), key=lambda r: r["row"])
    with open(site / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("filename", "caption"), *[(r["url"].rsplit("/", 1)[1], r["caption"]) for r in kept]])

    common = ["towers.image_size=64", "train.epochs=20", "train.ensemble=1", "bridge.alpha=0", "data.folds=4",
              f"cache_dir={tmp_path / 'cache'}"]
    results = {}
    for name, source in [("wds", f"wds:{tmp_path / 'shards'}"), ("csv", f"csv:{site / 'pairs.csv'}")]:
        cfg = build_config(CaptionRunConfig, {}, [f"data.source={source}", *common, f"out={tmp_path / name}"])
        results[name] = caption.run(cfg, progress=False)["metrics"]
    w, c = results["wds"], results["csv"]
    assert w["n_images"] == c["n_images"] == N_STAMPS // 4 and w["n_texts"] == c["n_texts"]
    chance = np.mean([min(k, w["n_images"]) / w["n_images"] for k in (1, 5, 10)])
    assert w["MR"] > chance + 0.03, (w, chance)                 # it learned something, so the comparison means something
    assert abs(w["MR"] - c["MR"]) <= 0.01, (w, c)


def test_a_wds_caption_source_reads_the_configured_field(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPFORGE_DATA", str(tmp_path / "data"))
    ds = load_caption_source(f"wds:{shards}/00000.tar", caption_field="caption")
    assert ds.captions == [["from json"]]
