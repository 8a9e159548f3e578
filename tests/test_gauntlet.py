"""The bad-input gauntlet: a corpus of broken and awkward inputs, generated here, through every entry point.

Entry points: align on a class folder (``clipforge align``), caption training on a CSV (``clipforge train``), the
eval stage (``clipforge eval``), index build (library and ``clipforge index build``), serve upload (the web API),
and download (``clipforge download`` from a local HTTP server). Nothing may crash; every bad item is skipped with
a reason in that entry point's report (or refused with a clear message); every good item, including the awkward
but valid ones (CMYK, 16-bit, palette + transparency, EXIF-rotated, animated GIF, unicode and space-laden paths,
a PNG named .jpg, a large photo), is processed. ``KINDS`` lists what is covered; docs/robustness.md has the table. Bad configs, arguments and checkpoints are
in test_gauntlet_cli.py, hostile files and requests against the index and the service in test_gauntlet_service.py.
"""
from __future__ import annotations

import csv
import io
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipforge.cli import app

from captionutil import COLOURS, SHAPES, draw
from gauntletutil import grey_png, missing_from_robustness_doc

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
    out["decompression bomb (12000x12000, 20 KB)"].write_bytes(grey_png(12000, 12000, 1))     # over 90 MP, under PIL's 2x limit
    out["20000x20000 image"].write_bytes(grey_png(20000, 20000, 1))                            # 400 MP
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
    from clipforge.data.dataset import SkipReport
    from clipforge.data.wds import iter_samples
    kept = {s.caption for s in iter_samples(f"wds:{tmp_path / 'dl'}", SkipReport(), require_caption=False)}
    with open(tmp_path / "dl" / "failures.csv", encoding="utf-8") as f:
        failed = {row["caption"]: row["reason"] for row in csv.DictReader(f)}
    # img2dataset (OpenCV) reads an animated GIF's first frame: it is kept, like every other good image
    assert kept == {k.replace(",", " ") for k in GOOD_IMAGES}
    assert set(failed) == {k.replace(",", " ") for k in BAD_IMAGES} | {"missing", "caf\ufffd"}
    assert all(len(v) > 5 for v in failed.values())
    assert "UTF-8" in failed["caf\ufffd"] and "404" in failed["missing"]

    (tmp_path / "nourl.csv").write_text("address,caption\nhttp://127.0.0.1:9/a.png,a\n")
    r = CliRunner().invoke(app, ["download", str(tmp_path / "nourl.csv"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "url" in r.output and "Traceback" not in r.output     # a CSV with no url column


def test_every_kind_is_listed_in_the_robustness_doc():
    missing = missing_from_robustness_doc(KINDS)
    assert not missing and len(KINDS) >= 15, missing
