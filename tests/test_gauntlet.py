"""The bad-input gauntlet: a corpus of broken and awkward inputs, generated here, through every entry point.

Entry points: align on a class folder (``clipforge align``), caption training on a CSV (``clipforge train``), the
eval stage (``clipforge eval``), index build (library and ``clipforge index build``), serve upload (the web API),
and download (``clipforge download`` from a local HTTP server). Nothing may crash; every bad item is skipped with
a reason in that entry point's report (or refused with a clear message); every good item, including the awkward
but valid ones (CMYK, 16-bit, palette + transparency, EXIF-rotated, animated GIF, unicode and space-laden paths,
a PNG named .jpg, a large photo), is processed. ``KINDS`` lists what is covered; docs/robustness.md has the table.
"""
from __future__ import annotations

import csv
import io
import json
import os
import struct
import threading
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipforge.cli import app

from captionutil import COLOURS, SHAPES, draw

# -- the corpus --------------------------------------------------------------------------------------------------

BAD_IMAGES = {  # kind -> file name (each must be skipped with a reason, or refused by the server)
    "truncated JPEG": "truncated.jpg",
    "truncated PNG": "truncated.png",
    "zero-byte file": "empty.jpg",
    "text file named .jpg": "notes.jpg",
    "HTML error page named .png": "error-page.png",
    "junk after a JPEG signature": "junk.jpg",
    "decompression bomb (12000x12000, 20 KB)": "bomb.png",
    "20000x20000 image": "huge-20000.png",
}
GOOD_IMAGES = {  # kind -> file name (valid: must be processed)
    "animated GIF (first frame)": "animated.gif",
    "CMYK JPEG": "cmyk.jpg",
    "16-bit PNG": "grey16.png",
    "palette + transparency PNG": "palette-alpha.png",
    "EXIF-rotated photo": "exif-rotated.jpg",
    "unicode and spaces in the path": "ünï cödé 猫 (1).png",
    "comma in the file name": "comma, in name.png",
    "PNG content named .jpg": "really-a-png.jpg",
    "greyscale JPEG": "grey.jpg",
    "large photo (2400x1600)": "large.jpg",
}
CSV_PROBLEMS = ("empty caption", "whitespace-only caption", "line not UTF-8", "extra column (unquoted comma)",
                "empty filename", "missing referenced file", "quote never closed", "quote left open before the next row")
CSV_OK = ("caption spanning two lines (quoted)", "extra header column", "byte-order mark", "unicode caption")
KINDS = [*BAD_IMAGES, *GOOD_IMAGES, *CSV_PROBLEMS, *CSV_OK, "CSV missing its caption column"]


def _png_of_zeros(path: Path, w: int, h: int) -> None:
    """A valid 1-bit PNG of w x h black pixels, written without ever holding the image (a few KB on disk)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    z = zlib.compressobj(9)
    row = b"\0" * (1 + (w + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _noise(seed: int, size=(48, 40), mode="RGB") -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def _write_good(d: Path) -> dict[str, Path]:
    out = {k: d / n for k, n in GOOD_IMAGES.items()}
    frames = [_noise(1), _noise(2)]
    frames[0].save(out["animated GIF (first frame)"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.new("CMYK", (48, 40), (0, 200, 30, 0)).save(out["CMYK JPEG"], "JPEG")
    Image.fromarray((np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 30)).save(out["16-bit PNG"])
    pal = Image.new("P", (48, 40), 1)
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    pal.paste(0, (0, 0, 20, 40))
    pal.save(out["palette + transparency PNG"], transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    _noise(3, (60, 36)).save(out["EXIF-rotated photo"], "JPEG", exif=exif.tobytes())
    _noise(4).save(out["unicode and spaces in the path"])
    _noise(5).save(out["comma in the file name"])
    _noise(6).save(out["PNG content named .jpg"], "PNG")
    _noise(7, mode="L").save(out["greyscale JPEG"], "JPEG")
    ramp = np.linspace(0, 255, 2400, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (1600, 1))] * 3, -1)).save(out["large photo (2400x1600)"], "JPEG")
    return out


def _write_bad(d: Path) -> dict[str, Path]:
    out = {k: d / n for k, n in BAD_IMAGES.items()}
    buf = io.BytesIO()
    _noise(10, (64, 64)).save(buf, "JPEG")
    out["truncated JPEG"].write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    buf = io.BytesIO()
    _noise(11, (64, 64)).save(buf, "PNG")
    out["truncated PNG"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["zero-byte file"].write_bytes(b"")
    out["text file named .jpg"].write_text("not an image, just notes\n")
    out["HTML error page named .png"].write_text("<html><body>403 Forbidden</body></html>")
    out["junk after a JPEG signature"].write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    _png_of_zeros(out["decompression bomb (12000x12000, 20 KB)"], 12000, 12000)     # over 90 MP, under PIL's 2x limit
    _png_of_zeros(out["20000x20000 image"], 20000, 20000)                            # 400 MP
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("gauntlet")
    images = root / "captions" / "images"
    images.mkdir(parents=True)
    good, bad = _write_good(images), _write_bad(images)
    fillers = []
    for colour in COLOURS:
        for k, shape in enumerate(SHAPES):
            p = images / f"{colour}-{shape}.png"
            draw(shape, colour, 100 + len(fillers)).save(p)
            fillers.append((p, f"a {colour} {shape}"))
    return {"root": root, "images": images, "good": good, "bad": bad, "fillers": fillers}


def _caption_csv(c) -> tuple[Path, dict]:
    """captions.csv with every CSV problem, the awkward images and the bad images; -> (path, {kind: line no})."""
    lines: list[bytes] = ["\ufefffilename,caption,license".encode()]                 # BOM + an extra column

    def add(text: str | bytes) -> int:
        """Append a row; -> the physical line it starts on (a quoted caption may hold a newline)."""
        start = sum(ln.count(b"\n") + 1 for ln in lines) + 1
        lines.append(text if isinstance(text, bytes) else text.encode())
        return start

    def row(name, caption, lic="cc0") -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow([name, caption, lic])
        return out.getvalue()

    where = {}
    for i, (p, cap) in enumerate(c["fillers"]):
        if i == 5:   # the rows after it must still be read, though a later quoted field could close this quote
            where["quote left open before the next row"] = add(f'{p.name},"a quote left open at the row end,cc0')
        add(row(p.name, cap))
    for kind, p in c["good"].items():
        where[kind] = add(row(p.name, f"an awkward image: {kind} 一张图片"))
    for kind, p in c["bad"].items():
        where[kind] = add(row(p.name, f"a broken image: {kind}"))
    where["caption spanning two lines (quoted)"] = add(row("red-circle.png", "a red circle,\nround and red"))
    where["empty caption"] = add(row("blue-square.png", ""))
    where["whitespace-only caption"] = add(row("blue-square.png", "   \t "))
    where["line not UTF-8"] = add("green-circle.png,caf\xe9 au lait,cc0".encode("latin-1"))
    where["extra column (unquoted comma)"] = add("green-square.png,a square, green,cc0")
    where["empty filename"] = add(",a caption without a file,cc0")
    where["missing referenced file"] = add(row("no-such-file.png", "this file does not exist"))
    where["quote never closed"] = add('yellow-circle.png,"a caption whose quote never closes,cc0')
    for _ in range(60):                                                              # the quote stays open past the limit
        add("")
    add(row("yellow-square.png", "read again after the unclosed quote"))
    path = c["root"] / "captions" / "captions.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, where


def _expected_csv_skips(c, where) -> dict[str, str]:
    """report item -> kind, as load_caption_csv and the decoder name them."""
    exp = {f"captions.csv:{where[k]}": k for k in ("empty caption", "whitespace-only caption", "line not UTF-8",
                                                  "extra column (unquoted comma)", "empty filename", "quote never closed",
                                                  "quote left open before the next row")}
    exp["captions.csv:no-such-file.png"] = "missing referenced file"
    exp.update({str(p.resolve()): k for k, p in c["bad"].items()})
    return exp


def _good_names(c) -> set[str]:
    return {p.name for p in c["good"].values()} | {p.name for p, _ in c["fillers"]}


def _check_report(items, expected: dict[str, str]):
    got = {i: r for i, r in items}
    assert set(got) == set(expected), (sorted(set(got) ^ set(expected)))
    for item, reason in got.items():
        assert isinstance(reason, str) and len(reason.strip()) > 5, (item, reason)


# -- the entry points --------------------------------------------------------------------------------------------

TINY_CAPTION = ["towers.image_size=32", "train.epochs=3", "train.ensemble=1", "bridge.alpha=0", "data.folds=4"]


@pytest.fixture(scope="module")
def caption_run(corpus, tmp_path_factory):
    """``clipforge train`` on the gauntlet CSV (the model is reused by eval, index and serve)."""
    out = tmp_path_factory.mktemp("caption-run")
    path, where = _caption_csv(corpus)
    r = CliRunner().invoke(app, ["train", "--quiet", *[a for s in [f"data.source=csv:{path}", *TINY_CAPTION,
                                 f"out={out}", f"cache_dir={out / 'cache'}"] for a in ("-s", s)]])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return {"out": out, "csv": path, "where": where, "result": json.loads((out / "results.json").read_text())}


def test_caption_training_skips_every_bad_row_and_image_and_keeps_every_good_one(corpus, caption_run):
    res, where = caption_run["result"], caption_run["where"]
    skipped = json.loads((caption_run["out"] / "skipped.json").read_text())
    _check_report([(s["item"], s["reason"]) for s in skipped], _expected_csv_skips(corpus, where))
    n_good = len(_good_names(corpus))
    assert res["n_train_images"] + res["metrics"]["n_images"] == n_good
    reasons = {s["item"]: s["reason"] for s in skipped}
    assert "UTF-8" in reasons[f"captions.csv:{where['line not UTF-8']}"]
    assert "fields" in reasons[f"captions.csv:{where['extra column (unquoted comma)']}"]
    assert "before the next row" in reasons[f"captions.csv:{where['quote left open before the next row']}"]
    assert "too large" in reasons[str(corpus["bad"]["20000x20000 image"].resolve())]
    assert "too large" in reasons[str(corpus["bad"]["decompression bomb (12000x12000, 20 KB)"].resolve())]


def test_caption_csv_multiline_caption_is_read_whole(corpus, caption_run):
    from clipforge.data.captions import load_caption_csv
    ds = load_caption_csv(caption_run["csv"])
    caps = dict(zip((p.name for p in ds.paths), ds.captions))
    assert "a red circle, round and red" in caps["red-circle.png"]
    assert caps["yellow-square.png"][-1] == "read again after the unclosed quote"      # reading went on after it
    assert caps["ünï cödé 猫 (1).png"] == ["an awkward image: unicode and spaces in the path 一张图片"]


def test_eval_stage_reports_the_same_skips(corpus, caption_run, tmp_path):
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(app, ["eval", *[a for s in [f"model={caption_run['out'] / 'model'}", f"data.source=csv:{caption_run['csv']}",
                                 "data.fold=null", f"out={out}", f"cache_dir={tmp_path / 'cache'}"] for a in ("-s", s)]])
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads(out.read_text())
    _check_report([(s["item"], s["reason"]) for s in res["skipped"]], _expected_csv_skips(corpus, caption_run["where"]))
    assert res["metrics"]["n_images"] == len(_good_names(corpus))


def test_train_and_eval_refuse_a_csv_without_its_caption_column(caption_run, tmp_path):
    bad = tmp_path / "nocap.csv"
    bad.write_text("filename,text\na.png,a cat\n")
    model = caption_run["out"] / "model"
    for cmd in (["train", "-s", f"data.source=csv:{bad}", "-s", f"out={tmp_path / 'o'}"],
                ["eval", "-s", f"data.source=csv:{bad}", "-s", f"out={tmp_path / 'e.json'}", "-s", f"model={model}"]):
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code == 2 and "caption" in r.output and "Traceback" not in r.output, r.output


def test_align_on_a_class_folder_skips_bad_files_and_embeds_the_rest(corpus, tmp_path):
    root = tmp_path / "classes"
    files = [*corpus["good"].items(), *corpus["bad"].items()]
    names = ["bird", "cat", "dog", "fish"]
    placed = {}
    for i, (kind, src) in enumerate(files):
        d = root / names[i % 4]
        d.mkdir(parents=True, exist_ok=True)
        (d / src.name).write_bytes(src.read_bytes())
        placed[kind] = d / src.name
    for c, name in enumerate(names):                                                # enough good images per class
        for k in range(3):
            draw(SHAPES[c % 3], list(COLOURS)[k], 10 * c + k).save(root / name / f"ok-{k}.png")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["align", "--quiet", *[a for s in [f"data.source=folder:{root}", "data.n_unseen=1",
                                 "towers.image_size=32", "train.epochs=3", "train.ensemble=1", f"out={out}",
                                 f"cache_dir={tmp_path / 'cache'}"] for a in ("-s", s)]])
    assert r.exit_code == 0, r.output + repr(r.exception)
    skipped = json.loads((out / "skipped.json").read_text())
    _check_report([(s["item"], s["reason"]) for s in skipped], {str(placed[k]): k for k in BAD_IMAGES})
    res = json.loads((out / "results.json").read_text())
    assert res["n_skipped"] == len(BAD_IMAGES)
    assert res["n_test"] + sum(1 for _ in root.rglob("*")) > 0                        # ran to the end, results written


@pytest.fixture(scope="module")
def built_index(corpus, caption_run, tmp_path_factory):
    from clipforge.index import ImageIndex
    out = tmp_path_factory.mktemp("index") / "idx"
    idx = ImageIndex.build(caption_run["csv"], caption_run["out"] / "model", out, progress=False,
                           cache_dir=out.parent / "cache")
    return idx, out


def test_index_build_from_the_csv_skips_bad_rows_and_images(corpus, caption_run, built_index):
    idx, _ = built_index
    where = caption_run["where"]
    expected = {str(p.resolve()): k for k, p in corpus["bad"].items()}
    expected.update({f"captions.csv:{where[k]}{' no-such-file.png' if k == 'missing referenced file' else ''}": k
                     for k in ("line not UTF-8", "empty filename", "missing referenced file", "quote never closed",
                               "quote left open before the next row")})
    twice = {i for i, r in idx.report.skipped if r.startswith("file listed twice")}  # an index keeps one record a file
    assert {i.split(" ")[-1] for i in twice} == {"red-circle.png", "blue-square.png", "green-square.png", "yellow-square.png"}
    _check_report([(i, r) for i, r in idx.report.skipped if i not in twice], expected)
    # empty captions and an extra field are fine for an index (the caption is optional): those images are in it
    indexed = {Path(idx.record(i).path).name for i in range(len(idx))}
    assert indexed == _good_names(corpus) and len(idx) == len(_good_names(corpus))
    assert idx.record(next(i for i in range(len(idx)) if idx.record(i).path.endswith("猫 (1).png"))).caption.startswith("an awkward")


def test_cli_index_build_from_a_folder_lists_skips(corpus, caption_run, tmp_path):
    r = CliRunner().invoke(app, ["index", "build", str(corpus["images"]), "--model", str(caption_run["out"] / "model"),
                                 "--out", str(tmp_path / "idx"), "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    r = CliRunner().invoke(app, ["index", "info", str(tmp_path / "idx"), "--skipped"])
    assert r.exit_code == 0
    for p in corpus["bad"].values():
        assert p.name in r.output, p.name


def test_serve_upload_refuses_bad_files_with_a_reason_and_accepts_awkward_ones(corpus, built_index):
    from fastapi.testclient import TestClient
    from clipforge.serve import ServeSettings, create_app
    _, index_dir = built_index
    client = TestClient(create_app(index_dir, ServeSettings()), raise_server_exceptions=False, base_url="http://localhost")
    for kind, p in corpus["good"].items():
        r = client.post("/api/search/image", files={"file": (p.name, p.read_bytes(), "application/octet-stream")},
                        data={"k": "3"})
        assert r.status_code == 200 and len(r.json()["results"]) == 3, (kind, r.text)
    for kind, p in corpus["bad"].items():
        r = client.post("/api/search/image", files={"file": (p.name, p.read_bytes(), "image/png")})
        assert r.status_code in (413, 415, 422), (kind, r.status_code, r.text)
        assert len(r.json()["detail"]) > 10, kind
        r = client.post("/api/classify", files={"file": (p.name, p.read_bytes(), "image/png")}, data={"labels": "a, b"})
        assert r.status_code in (413, 415, 422), (kind, r.status_code, r.text)


class _Files(BaseHTTPRequestHandler):
    root: Path = Path(".")

    def log_message(self, *a):
        pass

    def do_GET(self):
        p = self.root / urllib.parse.unquote(self.path.lstrip("/"))
        if not p.is_file():
            self.send_response(404)
            self.end_headers()
            return
        data = p.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_download_keeps_good_images_and_reports_every_bad_one(corpus, tmp_path):
    _Files.root = corpus["images"]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    try:
        rows = [f"{base}{urllib.parse.quote(p.name)},{kind.replace(',', ' ')}".encode()
                for kind, p in [*corpus["good"].items(), *corpus["bad"].items()]]
        rows += [f"{base}no-such-file.png,missing".encode(), f"{base}x.png,caf\xe9".encode("latin-1")]
        urls = tmp_path / "urls.csv"
        urls.write_bytes(b"url,caption,extra\n" + b"\n".join(rows) + b"\n")
        r = CliRunner().invoke(app, ["download", str(urls), "--out", str(tmp_path / "dl"), "--timeout", "5",
                                     "--retries", "0", "--quiet"])
        assert r.exit_code == 0, r.output + repr(r.exception)
    finally:
        httpd.shutdown()
        httpd.server_close()
    with open(tmp_path / "dl" / "captions.csv", encoding="utf-8") as f:
        kept = {row["caption"] for row in csv.DictReader(f)}
    with open(tmp_path / "dl" / "failures.csv", encoding="utf-8") as f:
        failed = {row["caption"]: row["reason"] for row in csv.DictReader(f)}
    # downloads keep still images only, by design: the animated GIF is dropped with its reason
    assert kept == {k.replace(",", " ") for k in GOOD_IMAGES if "GIF" not in k}
    assert set(failed) == {k.replace(",", " ") for k in BAD_IMAGES} | {"animated GIF (first frame)", "missing", "caf\ufffd"}
    assert all(len(v) > 5 for v in failed.values())
    assert "UTF-8" in failed["caf\ufffd"] and failed["missing"] == "HTTP 404"

    (tmp_path / "nourl.csv").write_text("address,caption\nhttp://127.0.0.1:9/a.png,a\n")
    r = CliRunner().invoke(app, ["download", str(tmp_path / "nourl.csv"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "url" in r.output and "Traceback" not in r.output     # a CSV with no url column


def test_every_kind_is_listed_in_the_robustness_doc():
    doc = Path(__file__).resolve().parents[1] / "docs" / "robustness.md"
    text = doc.read_text(encoding="utf-8")
    missing = [k for k in KINDS if k not in text]
    assert not missing and len(KINDS) >= 15, missing


# -- configs, arguments and checkpoints: one red line, exit code 2, nothing half done ---------------------------

class _Touch:
    """Unpickling this creates a file: a stand-in for the code a crafted checkpoint could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _class_folder(root: Path, n_classes: int = 3, per_class: int = 3) -> Path:
    for c in range(n_classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            draw(SHAPES[c % 3], list(COLOURS)[k % 4], 10 * c + k).save(d / f"ok-{k}.png")
    return root


def _align(tmp: Path, folder: Path, *sets: str) -> list[str]:
    return ["align", "--quiet", *[a for s in [f"data.source=folder:{folder}", "data.n_unseen=1", "towers.image_size=32",
                                              "train.epochs=2", "train.ensemble=1", "train.checkpoint_every=1",
                                              f"out={tmp / 'run'}", f"cache_dir={tmp / 'cache'}", *sets]
                                  for a in ("-s", s)]]


def _case(kind: str, tmp: Path, corpus) -> tuple[list[str], str]:
    """-> (argv, what the one error line must say) for a CLI kind, its files written under ``tmp``."""
    if kind == "config file not UTF-8":
        (tmp / "latin1.yaml").write_bytes("train:\n  epochs: 3  # caf\xe9\n".encode("latin-1"))
        return ["align", "-c", str(tmp / "latin1.yaml")], "not UTF-8"
    if kind == "a directory given as a config":
        return ["train", "-c", str(tmp)], "is a directory"
    if kind == "true for an integer (epochs: true)":
        (tmp / "bool.yaml").write_text("train:\n  epochs: true\n")
        return ["align", "-c", str(tmp / "bool.yaml")], "'train.epochs': Value error, needs a number"
    if kind == "infinite learning rate (train.lr=inf)":
        return ["align", "-s", "train.lr=inf"], "'train.lr': Input should be a finite number"
    if kind == "learning rate that overflows (train.lr=1e308)":
        return ["train", "-s", "train.lr=1e308"], "'train.lr': Input should be less than or equal to 10"
    if kind == "NaN for a float (train.weight_decay=.nan)":
        return ["align", "-s", "train.weight_decay=.nan"], "'train.weight_decay': Input should be a finite number"
    if kind == "as many unseen classes as classes (data.n_unseen)":
        return _align(tmp, _class_folder(tmp / "classes"), "data.n_unseen=3"), "'data.n_unseen': 3 unseen of 3 classes"
    if kind == "missing local directory as a tower (towers.text=hf:/nonexistent/dir)":
        return (_align(tmp, _class_folder(tmp / "classes"), "towers.text=hf:/nonexistent/dir"),
                "the local directory '/nonexistent/dir' does not exist")
    if kind == "a folder of only broken images":
        for i, p in enumerate(corpus["bad"].values()):
            d = tmp / "broken" / f"class{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            (d / p.name).write_bytes(p.read_bytes())
        return _align(tmp, tmp / "broken"), "no usable training images"
    if kind == "serve port out of range (--port 99999)":
        return ["serve", str(tmp / "idx"), "--port", "99999"], "--port 99999 is not a TCP port"
    if kind == "negative upload limit (serve --max-upload-mb -1)":
        return ["serve", str(tmp / "idx"), "--max-upload-mb", "-1"], "--max-upload-mb must be a positive"
    if kind == "empty text query (index search IDX '')":
        return ["index", "search", str(tmp / "idx"), " "], "the text QUERY is empty"
    if kind in ("crafted checkpoint (code in the pickle)", "truncated checkpoint, no earlier one", "garbage checkpoint"):
        ckpt = tmp / "run" / "checkpoints"
        ckpt.mkdir(parents=True)
        if kind.startswith("crafted"):
            torch.save({"model": {}, "opt": {}, "sched": {}, "state": _Touch(tmp / "pwned"), "rng": {}}, ckpt / "last.pt")
            want = "holds Python objects other than tensors"
        else:
            buf = io.BytesIO()
            torch.save({"model": {"w": torch.zeros(1000)}}, buf)
            (ckpt / "last.pt").write_bytes(buf.getvalue()[:300] if kind.startswith("truncated") else os.urandom(3000))
            want = "cannot be read"
        return [*_align(tmp, _class_folder(tmp / "classes")), "--resume"], want
    raise KeyError(kind)


CLI_PROBLEMS = ("config file not UTF-8", "a directory given as a config", "true for an integer (epochs: true)",
                "infinite learning rate (train.lr=inf)", "learning rate that overflows (train.lr=1e308)",
                "NaN for a float (train.weight_decay=.nan)", "as many unseen classes as classes (data.n_unseen)",
                "missing local directory as a tower (towers.text=hf:/nonexistent/dir)", "a folder of only broken images",
                "serve port out of range (--port 99999)", "negative upload limit (serve --max-upload-mb -1)",
                "empty text query (index search IDX '')", "crafted checkpoint (code in the pickle)",
                "truncated checkpoint, no earlier one", "garbage checkpoint")
KINDS += CLI_PROBLEMS


@pytest.mark.parametrize("kind", CLI_PROBLEMS)
def test_bad_configs_arguments_and_checkpoints_are_one_clear_line(kind, corpus, tmp_path):
    argv, want = _case(kind, tmp_path, corpus)
    r = CliRunner().invoke(app, argv)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1 and want in errors[0], (kind, r.output, repr(r.exception))
    assert "Traceback" not in r.output and "huggingface" not in r.output.lower(), r.output
    assert not (tmp_path / "pwned").exists(), "a crafted checkpoint ran code"
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "results.json").exists()


# -- the service and the index against hostile files and requests (issue 16) --------------------------------------

INDEX_KINDS = ("symlink to a file outside the image folder (/etc/passwd)", "dangling symlink",
               "symlink to a folder outside the image folder", "SVG without a PNG twin", "SVG with a PNG twin",
               "FIFO named .png", "file that is not an image type (.txt)", "CSV row pointing outside the CSV's folder")
SERVE_KINDS = ("39,000,000 x 1 PNG (extreme aspect ratio)", "36 MP 16-bit PNG", "thumbnail id beyond SQLite integers",
               "foreign Host header (DNS rebinding)", "request header that never completes", "search of an empty index")
KINDS += [*INDEX_KINDS, *SERVE_KINDS]


def _grey_png(w: int, h: int, depth: int = 8) -> bytes:
    """A grey PNG of zeros (8- or 16-bit), compressed row by row: a few KB whatever the size."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    z = zlib.compressobj(9)
    row = b"\0" * (1 + w * depth // 8)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_index_build_reports_links_vector_images_and_special_files(tmp_path):
    import useutil
    from clipforge.index import ImageIndex
    folder = useutil.make_shapes(tmp_path / "stamps", per_class=1, seed=8)
    (tmp_path / "elsewhere").mkdir()
    files = {"symlink to a file outside the image folder (/etc/passwd)": ("passwd.png", "outside the image folder"),
             "dangling symlink": ("gone.png", "dangling symlink"),
             "symlink to a folder outside the image folder": ("more", "folder outside the image folder"),
             "SVG without a PNG twin": ("lone.svg", "no PNG twin"),
             "SVG with a PNG twin": ("tux.svg", "PNG twin tux.png is indexed"),
             "FIFO named .png": ("pipe.png", "FIFO"),
             "file that is not an image type (.txt)": ("tux.txt", "not an image file type")}
    (folder / "passwd.png").symlink_to("/etc/passwd")
    (folder / "gone.png").symlink_to(tmp_path / "no-such.png")
    (folder / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    for name in ("lone.svg", "tux.svg"):
        (folder / name).write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    _noise(30).save(folder / "tux.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "tux.txt").write_text("Tux, the penguin")
    ix = ImageIndex.build(folder, useutil.trained_model_dir(), tmp_path / "idx", progress=False, cache_dir=tmp_path / "c")
    reasons = dict(ix.report.skipped)
    for kind, (name, words) in files.items():
        assert words in reasons.get(str(folder / name), ""), (kind, reasons.get(str(folder / name)))
    assert len(ix) == len(useutil.SHAPES) + 1                                        # the shapes and tux.png

    (tmp_path / "set").mkdir()                                                       # "CSV row pointing outside ..."
    _noise(31).save(tmp_path / "set" / "ok.png")
    (tmp_path / "set" / "captions.csv").write_text("filename,caption\nok.png,fine\n../stamps/tux.png,up\n/etc/passwd,abs\n")
    ix2 = ImageIndex.build(tmp_path / "set" / "captions.csv", useutil.trained_model_dir(), tmp_path / "idx2",
                           progress=False, cache_dir=tmp_path / "c")
    assert len(ix2) == 1 and [r for _, r in ix2.report.skipped if "outside the CSV's folder" in r] and \
        len(ix2.report.skipped) == 2, ix2.report.skipped


def test_serve_refuses_memory_hungry_pngs_foreign_hosts_and_huge_ids(tmp_path):
    import socket
    import time

    import useutil
    from fastapi.testclient import TestClient
    from clipforge.index import ImageIndex
    from clipforge.serve import ServeSettings, create_app, server_config
    index_dir, _ = useutil.shared_index()
    app = create_app(index_dir, ServeSettings(text_runtime="torch"))
    client = TestClient(app, raise_server_exceptions=False, base_url="http://localhost")
    r = client.post("/api/search/image", files={"file": ("long.png", _grey_png(39_000_000, 1), "image/png")})
    assert r.status_code == 422 and "aspect ratio" in r.json()["detail"], r.text
    r = client.post("/api/search/image", files={"file": ("deep.png", _grey_png(6000, 6000, 16), "image/png")})
    assert r.status_code == 200 and r.json()["results"], r.text                    # decoded small, then searched
    assert client.get(f"/api/thumbnail/{2 ** 63}").status_code in (404, 422)
    r = TestClient(app, base_url="http://evil.example").get("/api/health")
    assert r.status_code == 400 and "host" in r.text.lower()

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ImageIndex.build(empty, useutil.trained_model_dir(), tmp_path / "idx", progress=False, cache_dir=tmp_path / "c")
    r = TestClient(create_app(tmp_path / "idx", ServeSettings(text_runtime="torch")), raise_server_exceptions=False,
                   base_url="http://localhost").get("/api/search/text", params={"q": "a circle"})
    assert r.status_code == 400 and "holds no images" in r.json()["detail"], r.text

    import uvicorn
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, header_timeout=1, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=6) as c:
            t0 = time.time()
            c.sendall(b"POST /api/search/image HTTP/1.1\r\nHost: local")
            assert c.recv(64) == b"" and time.time() - t0 < 4                      # closed by the server
    finally:
        server.should_exit = True
        thread.join(10)
