"""The index against hostile folders and concurrent readers: nothing outside the image root is opened, every file
left out is reported, a reader keeps its version while a writer publishes, an empty index says so."""
import os
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import useutil
from clipforge.cli import app as cli_app
from clipforge.errors import ClipforgeError
from clipforge.index import ImageIndex, LiveIndex

_OPENED: list = []
_RECORD = threading.Event()


def _audit(event, args):
    if _RECORD.is_set() and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def model_dir():
    return useutil.trained_model_dir()


def _opened_during(fn):
    _OPENED.clear()
    _RECORD.set()
    try:
        return fn()
    finally:
        _RECORD.clear()


def test_build_opens_nothing_outside_the_folder_and_reports_every_file_left_out(tmp_path, model_dir):
    coll = useutil.make_shapes(tmp_path / "coll", per_class=2, seed=3)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (40, 40), "red").save(outside / "secret.png")                 # would embed fine if followed
    links = {"passwd.png": Path("/etc/passwd"), "secret.png": outside / "secret.png",
             "gone.png": tmp_path / "no-such-file.png"}
    for name, target in links.items():
        (coll / name).symlink_to(target)
    (coll / "elsewhere").symlink_to(outside, target_is_directory=True)
    (coll / "stamp.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (coll / "star.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    Image.new("RGB", (40, 40), "blue").save(coll / "star.png")                       # the SVG's PNG twin
    (coll / "notes.txt").write_text("stamp descriptions")
    os.mkfifo(coll / "pipe.png")                                                     # opening it would hang
    ix = _opened_during(lambda: ImageIndex.build(coll, model_dir, tmp_path / "ix", progress=False,
                                                 cache_dir=tmp_path / "cache"))
    outside_real = {os.path.realpath("/etc/passwd"), os.path.realpath(outside / "secret.png"), str(coll / "pipe.png")}
    touched = [p for p in _OPENED if os.path.realpath(p) in outside_real or p in outside_real]
    assert not touched, touched
    reasons = dict(ix.report.skipped)
    want = {"passwd.png": "outside the image folder", "secret.png": "outside the image folder",
            "gone.png": "dangling symlink", "elsewhere": "folder outside the image folder",
            "stamp.svg": "no PNG twin", "star.svg": "PNG twin star.png is indexed", "notes.txt": "not an image file",
            "pipe.png": "FIFO"}
    for name, words in want.items():
        assert words in reasons.get(str(coll / name), ""), (name, reasons.get(str(coll / name)))
    indexed = {Path(ix.record(i).path).name for i in range(len(ix))}
    assert len(ix) == 9 and "star.png" in indexed and "secret.png" not in indexed
    assert set(dict(ix.skipped())) == set(reasons)                                   # stored: index info --skipped


def test_csv_rows_outside_the_csv_folder_are_not_opened(tmp_path, model_dir):
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (40, 40), "green").save(root / "images" / "ok.png")
    Image.new("RGB", (40, 40), "red").save(tmp_path / "secret.png")
    (root / "images" / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "captions.csv").write_text("filename,caption\nok.png,fine\n../secret.png,up and out\n"
                                       f"{tmp_path / 'secret.png'},absolute\nlink.png,a link out\n/etc/passwd,passwd\n")
    ix = _opened_during(lambda: ImageIndex.build(root / "captions.csv", model_dir, tmp_path / "ix", progress=False,
                                                 cache_dir=tmp_path / "cache"))
    assert not [p for p in _OPENED if os.path.realpath(p) in {str(tmp_path / "secret.png"), "/etc/passwd"}]
    assert len(ix) == 1
    outside = [item for item, reason in ix.report.skipped if "outside the CSV's folder" in reason]
    assert len(outside) == 4, ix.report.skipped


def test_a_reader_keeps_its_version_while_a_writer_publishes(tmp_path, model_dir):
    ix = ImageIndex.build(useutil.make_shapes(tmp_path / "a", per_class=2, seed=4), model_dir, tmp_path / "ix",
                          progress=False, cache_dir=tmp_path / "cache")
    reader = ImageIndex.load(tmp_path / "ix")          # e.g. a server; its SQLite opens lazily, once per thread
    live = LiveIndex(ImageIndex.load(tmp_path / "ix", model=model_dir))
    ix.add(useutil.make_shapes(tmp_path / "b", per_class=1, seed=5), progress=False, cache_dir=tmp_path / "cache")
    assert reader.version.exists() and ix.version != reader.version
    got = {}
    t = threading.Thread(target=lambda: got.update(rec=reader.record(0)))
    t.start()
    t.join()
    assert got["rec"] is not None and got["rec"].id == 0                              # a new thread still reads it
    assert len(live) == 12 and live.version == ix.version                             # a live reader moved on
    old = reader.version
    reader.close()
    assert not old.exists() and ix.version.exists()                                   # collected once let go


def test_searching_an_empty_index_says_it_holds_no_images(tmp_path, model_dir):
    coll = tmp_path / "broken"
    coll.mkdir()
    (coll / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ix = ImageIndex.build(coll, model_dir, tmp_path / "ix", progress=False, cache_dir=tmp_path / "cache")
    assert len(ix) == 0
    with pytest.raises(ClipforgeError, match="holds no images") as e:
        ix.search_text("a circle")
    assert "width" not in str(e.value) and "--skipped" in str(e.value)
    r = CliRunner().invoke(cli_app, ["index", "search", str(tmp_path / "ix"), "a circle"])
    assert r.exit_code == 2 and "holds no images" in r.output and "width" not in r.output, r.output


def test_serve_of_a_folder_that_is_not_an_index_gives_the_error_and_no_serving_line(tmp_path):
    r = CliRunner().invoke(cli_app, ["serve", str(tmp_path)])
    assert r.exit_code == 2 and "not a clipforge index" in r.output, r.output
    assert "serving" not in r.output and "http://" not in r.output, r.output
