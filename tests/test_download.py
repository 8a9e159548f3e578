"""clipforge download (img2dataset into WebDataset shards) against a local HTTP server on 127.0.0.1: good files,
404s, slow answers, truncated transfers, cut files, non-images, tiny images, a flaky URL that works on retry, URLs
that must never be fetched; then reruns that fetch only unfinished shards, and the shards read back as wds:."""
import csv
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import pyarrow.parquet as pq
from PIL import Image
from typer.testing import CliRunner

from clipforge.cli import app
from clipforge.data.dataset import SkipReport
from clipforge.data.download import DownloadSettings, download
from clipforge.data.wds import iter_samples
from clipforge.errors import ClipforgeError


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


@pytest.fixture(scope="module")
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


SETTINGS = DownloadSettings(workers=8, timeout=1.0, retries=2, min_side=16, shard_size=8)


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, server):
    """One download of the whole list (about 10 s: the slow URL times out three times), shared by the tests."""
    tmp = tmp_path_factory.mktemp("dl")
    rows = _write_urls(tmp / "urls.csv", server)
    t0 = time.time()
    report = download(tmp / "urls.csv", tmp / "out", SETTINGS, progress=False)
    return tmp, rows, report, time.time() - t0, Counter(Handler.hits)


def _failures(out):
    with open(out / "failures.csv", encoding="utf-8") as f:
        return {r["caption"]: r["reason"] for r in csv.DictReader(f)}


def test_download_keeps_good_images_and_reports_every_failure(fetched):
    tmp, rows, report, seconds, hits = fetched
    out = tmp / "out"
    assert seconds < 30
    assert report.ok == len(GOOD) + 2 and report.failed == 8 and report.shards == 2     # 17 URLs fetched, 8 a shard
    got = list(iter_samples(f"wds:{out}", skipped := SkipReport()))
    assert not skipped.items
    assert {s.caption for s in got} == {f"caption of {p}" for p in GOOD} | {"flaky, 雨", "gif"}  # OpenCV reads GIFs
    assert all(s.image.mode == "RGB" and s.image.size == (64, 48) for s in got)
    fails = _failures(out)
    assert set(fails) == {"404", "slow", "truncated", "cut", "html", "tiny", "local", "repeat"}
    assert "404" in fails["404"] and "timed out" in fails["slow"] and "IncompleteRead" in fails["truncated"]
    assert "decod" in fails["cut"] and "decod" in fails["html"] and "too small" in fails["tiny"]
    assert fails["local"] == "not an http(s) URL" and fails["repeat"].startswith("duplicate of row")
    assert hits["/flaky.png"] == 3 and hits["/slow.png"] == 3                        # 503, 503, 200; three timeouts
    assert sum(hits.values()) == 3 * 4 + len(GOOD) + 4    # 404/truncated/slow/flaky thrice; file:// and the repeat never
    table = pq.read_table(out / "00000.parquet").to_pylist()                         # img2dataset's own row per URL
    assert {r["status"] for r in table} <= {"success", "failed_to_download", "failed_to_resize"}
    assert not list(out.glob("_tmp"))


def test_rerun_fetches_only_unfinished_shards(fetched, server):
    tmp, rows, report, _, _ = fetched
    out = tmp / "out"
    before = Counter(Handler.hits)
    again = download(tmp / "urls.csv", out, SETTINGS, progress=False)
    assert Handler.hits == before and again.ok == report.ok and again.resumed == report.ok    # nothing fetched
    (out / "00001_stats.json").unlink()                       # the second shard "did not finish"
    second = {r["url"].split(server)[1] for r in pq.read_table(out / "00001.parquet").to_pylist()}
    before = Counter(Handler.hits)
    third = download(tmp / "urls.csv", out, SETTINGS, progress=False)
    fetched_now = Handler.hits - before
    assert set(fetched_now) == second and third.ok == report.ok
    assert third.resumed == report.ok - sum(1 for s in iter_samples(str(out / "00001.tar"), SkipReport()))


def test_a_different_list_is_not_mixed_into_old_shards(fetched, server):
    tmp, rows, _, _, _ = fetched
    with open(tmp / "other.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["url", "caption"], [f"{server}/good3.png", "other"]])
    with pytest.raises(ClipforgeError, match="different URL list"):
        download(tmp / "other.csv", tmp / "out", SETTINGS, progress=False)


def test_an_image_clipforge_cannot_decode_is_a_failure_not_a_success(fetched):
    """img2dataset keeps what OpenCV decodes; an image PIL refuses in a shard is reported by download, once."""
    import tarfile
    tmp, _, report, _, _ = fetched
    out = tmp / "out"
    with tarfile.open(out / "00000.tar") as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    victim = next(m.name for m, _ in members if m.name.endswith(".jpg"))
    with tarfile.open(out / "00000.tar", "w") as t:           # the same shard, one image's bytes cut short
        for m, data in members:
            data = data[: len(data) // 2] if m.name == victim else data
            m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    again = download(tmp / "urls.csv", out, SETTINGS, progress=False)
    assert again.ok == report.ok - 1 and again.failed == report.failed + 1
    reasons = list(_failures(out).values())
    assert sum("kept by img2dataset but image does not decode" in r for r in reasons) == 1


def test_cli_download_then_index_build_reads_the_shards(tmp_path, server):
    with open(tmp_path / "urls.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["url", "caption"]] + [[f"{server}{p}", f"caption of {p}"] for p in GOOD]
                                + [[f"{server}/missing.png", "404"]])
    r = CliRunner().invoke(app, ["download", str(tmp_path / "urls.csv"), "--out", str(tmp_path / "out"), "--timeout", "1",
                                 "--retries", "0", "--min-side", "16", "--format", "png", "--quiet"])
    assert r.exit_code == 0, r.output
    assert f"{len(GOOD)} images in 1 shards" in r.output and "failures.csv" in r.output
    from clipforge.index.sources import list_source
    items, problems = list_source(f"wds:{tmp_path / 'out'}")
    assert len(items) == len(GOOD) and not problems
    assert sorted(i.caption for i in items) == sorted(f"caption of {p}" for p in GOOD)
    assert all(Image.open(i.path).size == (64, 48) for i in items)


def test_bad_settings_are_one_clear_error(tmp_path):
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/x.png\n")
    with pytest.raises(ClipforgeError, match="image format"):
        download(tmp_path / "urls.txt", tmp_path / "out", DownloadSettings(image_format="gif"), progress=False)
