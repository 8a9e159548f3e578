"""clipforge download against a local HTTP server on 127.0.0.1: good files, 404s, slow answers, truncated files,
non-images, GIFs, tiny images, a flaky URL that works on retry; then a rerun that fetches nothing again."""
import csv
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipforge.cli import app
from clipforge.data.download import DownloadSettings, download


def _noise_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (100, 100, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _img(fmt, size=(64, 48), color=(200, 30, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 128).save(buf, fmt)
    return buf.getvalue()


NOISE_PNG = _noise_png()
GOOD = {f"/good{i}.png": _img("PNG", color=(40 * i, 100, 200)) for i in range(5)}
GOOD["/photo.jpg"] = _img("JPEG")
GOOD["/rgba.png"] = _img("PNG", mode="LA")
FILES = {**GOOD, "/anim.gif": _img("GIF"), "/tiny.png": _img("PNG", size=(8, 8)),
         "/page.html": b"<html><body>hello</body></html>"}


class Handler(BaseHTTPRequestHandler):
    hits = Counter()
    flaky_left = {}

    def log_message(self, *a):
        pass

    def _send(self, code, body=b"", ctype="image/png", length=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path
        Handler.hits[path] += 1
        if path == "/slow.png":
            time.sleep(2.5)
            try:
                return self._send(200, GOOD["/good0.png"])
            except OSError:
                return            # the client gave up waiting, as it should
        if path == "/truncated.png":      # promises the whole file, sends half, hangs up
            data = NOISE_PNG
            self._send(200, data[:1000], length=len(data))
            self.wfile.flush()
            self.connection.close()
            return
        if path == "/cut.jpg":            # a complete transfer of a file cut in the middle
            data = _img("JPEG", size=(200, 200))
            return self._send(200, data[: len(data) // 3], "image/jpeg")
        if path == "/flaky.png":          # 503 twice, then the file
            left = Handler.flaky_left.get(path, 2)
            if left:
                Handler.flaky_left[path] = left - 1
                return self._send(503, b"busy", "text/plain")
            return self._send(200, GOOD["/good1.png"])
        if path in FILES:
            return self._send(200, FILES[path], "text/html" if path.endswith(".html") else "image/png")
        return self._send(404, b"not found", "text/plain")


class Server(ThreadingHTTPServer):
    request_queue_size = 128   # the default backlog of 5 drops SYNs when 8 workers connect at once


@pytest.fixture
def server():
    Handler.hits = Counter()
    Handler.flaky_left = {}
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _write_urls(path, base):
    rows = [(f"{base}{p}", f"caption of {p}") for p in GOOD]
    rows += [(f"{base}/missing.png", "404"), (f"{base}/slow.png", "slow"), (f"{base}/truncated.png", "truncated"),
             (f"{base}/cut.jpg", "cut"), (f"{base}/page.html", "html"), (f"{base}/anim.gif", "gif"),
             (f"{base}/tiny.png", "tiny"), (f"{base}/flaky.png", "flaky, 雨"), ("file:///etc/passwd", "local"),
             (f"{base}/good0.png", "repeat")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption"])
        w.writerows(rows)
    return rows


SETTINGS = DownloadSettings(workers=8, timeout=1.0, retries=2, backoff=0.05, min_side=16)


def test_download_keeps_good_images_and_reports_every_failure(tmp_path, server):
    _write_urls(tmp_path / "urls.csv", server)
    t0 = time.time()
    report = download(tmp_path / "urls.csv", tmp_path / "out", SETTINGS, progress=False)
    assert time.time() - t0 < 15
    assert report.ok == len(GOOD) + 1 and report.failed == 9
    with open(tmp_path / "out" / "captions.csv", encoding="utf-8") as f:
        kept = list(csv.DictReader(f))
    assert {r["caption"] for r in kept} == {f"caption of {p}" for p in GOOD} | {"flaky, 雨"}
    for r in kept:
        img = Image.open(tmp_path / "out" / r["filename"])
        assert img.mode == "RGB" and img.size == (int(r["width"]), int(r["height"])) == (64, 48)
    with open(tmp_path / "out" / "failures.csv", encoding="utf-8") as f:
        fails = {r["caption"]: r for r in csv.DictReader(f)}
    assert fails["404"]["reason"] == "HTTP 404" and fails["404"]["attempts"] == "1"       # no retry on 404
    assert "timed out" in fails["slow"]["reason"] and fails["slow"]["attempts"] == "3"    # retried, then given up
    assert "truncated" in fails["truncated"]["reason"]
    assert "cannot decode" in fails["cut"]["reason"]
    assert "not an image" in fails["html"]["reason"]
    assert fails["gif"]["reason"].startswith("GIF")
    assert "too small" in fails["tiny"]["reason"]
    assert fails["local"]["reason"] == "not an http(s) URL"
    assert "duplicate" in fails["repeat"]["reason"]
    assert Handler.hits["/flaky.png"] == 3                                             # 503, 503, 200
    assert not list((tmp_path / "out" / "images").glob(".*part"))                      # no half files left


def test_rerun_resumes_without_fetching_done_files(tmp_path, server):
    _write_urls(tmp_path / "urls.csv", server)
    download(tmp_path / "urls.csv", tmp_path / "out", SETTINGS, progress=False)
    (tmp_path / "out" / "images" / sorted(p.name for p in (tmp_path / "out" / "images").iterdir())[0]).unlink()
    before = Counter(Handler.hits)
    report = download(tmp_path / "urls.csv", tmp_path / "out", SETTINGS, progress=False)
    fetched = Handler.hits - before
    assert report.ok == len(GOOD) + 1 and report.resumed == len(GOOD)   # one deleted file fetched again
    assert sum(fetched[p] for p in GOOD) + fetched["/flaky.png"] == 1
    assert fetched["/missing.png"] == 1                                  # failures are tried again


def test_cli_download_then_index_build_reads_the_folder(tmp_path, server):
    _write_urls(tmp_path / "urls.csv", server)
    r = CliRunner().invoke(app, ["download", str(tmp_path / "urls.csv"), "--out", str(tmp_path / "out"), "--timeout", "1",
                                 "--retries", "2", "--min-side", "16", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "8 images" in r.output and "failures.csv" in r.output
    from clipforge.index.sources import list_source
    items, problems = list_source(tmp_path / "out" / "captions.csv")
    assert len(items) == 8 and not problems and all(i.caption for i in items)
