"""The service under hostile or unlucky use, over real sockets (uvicorn on a free loopback port, in this process):
an index updated by another process while it is served, huge ids, memory-hungry PNGs, foreign Host headers,
connections that never finish their header, and the API page offline."""
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn

import useutil
from gauntletutil import grey_png
from clipforge.index import ImageIndex
from clipforge.serve import ServeSettings, create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(config: uvicorn.Config):
    return useutil.start_uvicorn(config)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A fresh index (this module adds to it) served by uvicorn in a thread."""
    root = tmp_path_factory.mktemp("live")
    coll = useutil.make_shapes(root / "first", per_class=3, seed=21)
    ImageIndex.build(coll, useutil.trained_model_dir(), root / "index", progress=False, cache_dir=root / "cache")
    port = _free_port()
    app = create_app(root / "index", ServeSettings(text_runtime="torch"))
    server, thread = _start(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    yield {"base": f"http://127.0.0.1:{port}", "port": port, "root": root, "app": app}
    server.should_exit = True
    thread.join(10)


def _search_image(base: str, data: bytes, k: int = 3) -> httpx.Response:
    return httpx.post(f"{base}/api/search/image", files={"file": ("q.png", data, "image/png")}, data={"k": str(k)},
                      timeout=60)


# -- 1. an index add from another process while the index is served ---------------------------------------------

def test_index_add_from_another_process_is_picked_up_by_the_running_server(live):
    base, root = live["base"], live["root"]
    before = httpx.get(f"{base}/api/health").json()["images"]
    assert _search_image(base, (root / "first" / "circle" / "0.png").read_bytes()).status_code == 200
    new = useutil.make_shapes(root / "second", per_class=2, seed=77)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", "from clipforge.cli import app; app()", "index", "add",
                        str(root / "index"), str(new), "--quiet", "--cache-dir", str(root / "cache")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    queries = [p.read_bytes() for p in sorted(new.rglob("*.png"))]
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda i: _search_image(base, queries[i % len(queries)]), range(40)))
    assert [a.status_code for a in answers] == [200] * 40, [a.text for a in answers if a.status_code != 200][:2]
    for a in answers:                                       # each new image finds itself, under a new id
        top = a.json()["results"][0]
        assert top["id"] >= before and top["score"] > 0.999, top
    assert httpx.get(f"{base}/api/health").json()["images"] == before + len(queries)


# -- 2. path parameters are bounded ------------------------------------------------------------------------------

@pytest.mark.parametrize("image_id", [2 ** 63, 2 ** 63 - 1, 10 ** 40])
def test_thumbnail_of_an_id_beyond_sqlite_integers_is_404_or_422(live, image_id):
    r = httpx.get(f"{live['base']}/api/thumbnail/{image_id}")
    assert r.status_code in (404, 422), (r.status_code, r.text)


# -- 3. memory of decoding uploads --------------------------------------------------------------------------------


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak_growth_mb(fn) -> float:
    """Peak resident memory of this process (server threads included) while ``fn`` runs, over where it started."""
    with open("/proc/self/clear_refs", "w") as f:   # resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")
    start = _kib("VmRSS")
    fn()
    return (_kib("VmHWM") - start) / 1024


def test_three_concurrent_39m_by_1_png_uploads_stay_under_500_mb(live):
    data = grey_png(39_000_000, 1)
    assert len(data) < 60_000 and 39_000_000 < ServeSettings().max_pixels
    answers = []

    def upload_three():
        with ThreadPoolExecutor(3) as pool:
            answers.extend(pool.map(lambda _: _search_image(live["base"], data), range(3)))
    growth = _peak_growth_mb(upload_three)
    print(f"three concurrent 39M x 1 PNG uploads: peak RSS growth {growth:.0f} MB")
    assert growth < 500, f"peak RSS grew by {growth:.0f} MB"
    assert all(a.status_code == 422 and "aspect" in a.json()["detail"] for a in answers), [a.text for a in answers]


def test_a_36_mp_16_bit_png_is_searched_within_a_bounded_decode(live):
    data = grey_png(6000, 6000, 16)
    answers: list = []
    growth = _peak_growth_mb(lambda: answers.append(_search_image(live["base"], data)))
    print(f"one 6000x6000 16-bit PNG upload: peak RSS growth {growth:.0f} MB")
    assert answers[0].status_code == 200, answers[0].text
    assert growth < 250, f"peak RSS grew by {growth:.0f} MB for one 72 MB (decoded) image"


# -- 4. Host header and slow headers ---------------------------------------------------------------------------

def _get(port: int, host: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /api/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return int(s.recv(64).split(b" ")[1])


def test_a_foreign_host_header_gets_400_and_local_names_pass(live):
    port = live["port"]
    assert _get(port, "evil.example") == 400
    assert _get(port, f"evil.example:{port}") == 400
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert _get(port, host) == 200, host


def test_allowed_hosts_is_configurable(live):
    from fastapi.testclient import TestClient
    app = create_app(live["app"].state.index, ServeSettings(allowed_hosts=("search.lan",)))
    assert TestClient(app, base_url="http://search.lan").get("/api/health").status_code == 200
    assert TestClient(app, base_url="http://localhost").get("/api/health").status_code == 400
    anyhost = create_app(live["app"].state.index, ServeSettings(allowed_hosts=("*",)))
    assert TestClient(anyhost, base_url="http://evil.example").get("/api/health").status_code == 200


def test_a_connection_that_stalls_inside_its_header_is_closed_within_the_timeout(live):
    from clipforge.serve import server_config
    port = _free_port()
    server, thread = _start(server_config(live["app"], "127.0.0.1", port, header_timeout=1, log_level="warning"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=8) as s:      # a complete request still works
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.1 200")
        for partial in (b"", b"GET /api/health HTTP/1.1\r\nHost: loc"):
            with socket.create_connection(("127.0.0.1", port), timeout=8) as s:
                t0 = time.time()
                s.sendall(partial)
                time.sleep(0.5)
                s.sendall(b"a")                                                   # trickling does not reset it
                try:
                    got = s.recv(64)
                except socket.timeout:
                    got = None
                waited = time.time() - t0
            assert got == b"" and waited < 4, (partial, got, waited)
    finally:
        server.should_exit = True
        thread.join(10)


# -- 7. the API page works offline ----------------------------------------------------------------------------

def test_docs_pages_reference_nothing_outside_the_server(live):
    base = live["base"]
    for page in ("/docs", "/redoc"):
        html = httpx.get(base + page).text
        assert not re.findall(r"https?://", html), (page, re.findall(r"https?://[^\"' ]+", html))
        assets = re.findall(r"""(?:src|href)=["']?([^"' >]+)""", html) + re.findall(r"url: ?['\"]([^'\"]+)", html)
        assert any(a.endswith(".js") for a in assets), (page, assets)
        for a in assets:
            r = httpx.get(base + a)
            assert r.status_code == 200 and len(r.content) > 100, (page, a, r.status_code)
