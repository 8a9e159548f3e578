"""Each safety rule of the web service has a test here (see the list at the top of serve/app.py)."""
import io
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import useutil
from clipforge.serve import ServeSettings, create_app

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def env():
    index_dir, coll = useutil.shared_index()
    app = create_app(index_dir, ServeSettings(max_upload_bytes=LIMIT, max_pixels=1_000_000))
    return TestClient(app, raise_server_exceptions=False, base_url="http://localhost"), coll, app


def _png_bytes(w, h, color=255) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), color).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _png_header_only(w, h) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a classic decompression-bomb shape)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


UPLOAD_ENDPOINTS = [("/api/search/image", "file", {}), ("/api/classify", "file", {"labels": "a, b"}),
                    ("/api/similarity", "image_a", {"text_b": "x"})]


# -- size limit -> 413 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("url,field,extra", UPLOAD_ENDPOINTS)
def test_upload_over_the_size_limit_gets_413(env, url, field, extra):
    client, _, _ = env
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (LIMIT + 10)
    r = client.post(url, files={field: ("big.png", big, "image/png")}, data=extra)
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_chunked_upload_without_content_length_is_cut_off_with_413(env):
    client, _, _ = env

    def body():
        for _ in range(40):
            yield b"x" * 4096    # 160 KiB, never announced in a Content-Length

    r = client.post("/api/search/image", content=body(), headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413


def test_upload_under_the_limit_is_accepted(env):
    client, coll, _ = env
    r = client.post("/api/search/image", files={"file": ("ok.png", (coll / "circle" / "0.png").read_bytes(), "image/png")})
    assert r.status_code == 200


# -- non-images -> 415 / 422 with a message ------------------------------------------------------------------

@pytest.mark.parametrize("url,field,extra", UPLOAD_ENDPOINTS)
def test_non_image_upload_gets_415_with_a_message(env, url, field, extra):
    client, _, _ = env
    r = client.post(url, files={field: ("notes.png", b"%PDF-1.4 definitely not an image", "image/png")}, data=extra)
    assert r.status_code == 415 and "not an image" in r.json()["detail"]


def test_broken_image_gets_422_with_a_message(env):
    client, coll, _ = env
    data = (coll / "square" / "1.png").read_bytes()
    r = client.post("/api/search/image", files={"file": ("cut.png", data[: len(data) // 2], "image/png")})
    assert r.status_code == 422 and "cannot" in r.json()["detail"]
    r = client.post("/api/search/image", files={"file": ("empty.png", b"", "image/png")})
    assert r.status_code == 422 and "empty" in r.json()["detail"]


def test_missing_upload_gets_422(env):
    client, _, _ = env
    assert client.post("/api/search/image").status_code == 422


# -- decompression bombs -> refused before decoding ------------------------------------------------------------

def test_decompression_bomb_header_is_refused(env):
    client, _, _ = env
    bomb = _png_header_only(30_000, 30_000)       # 900 MP claimed in 100 bytes
    assert len(bomb) < 200
    r = client.post("/api/search/image", files={"file": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 413 and "decompression bomb" in r.json()["detail"]


def test_image_over_the_server_pixel_limit_is_refused(env):
    client, _, _ = env
    data = _png_bytes(2000, 1000)                 # 2 MP of white compresses to a few KB; the limit is 1 MP
    assert len(data) < LIMIT
    r = client.post("/api/classify", files={"file": ("wide.png", data, "image/png")}, data={"labels": "a, b"})
    assert r.status_code == 413 and "2000x1000" in r.json()["detail"]


# -- thumbnails only by index id ----------------------------------------------------------------------------

def test_thumbnails_only_for_ids_in_the_index(env):
    client, _, app = env
    n = len(app.state.index)
    assert client.get(f"/api/thumbnail/{n - 1}").status_code == 200
    assert client.get(f"/api/thumbnail/{n}").status_code == 404
    assert client.get("/api/thumbnail/-1").status_code == 422
    for evil in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "0.png", "1e3"):
        r = client.get(f"/api/thumbnail/{evil}")
        assert r.status_code in (404, 422) and "root:" not in r.text
    assert client.get("/api/thumbnail", params={"path": "/etc/passwd"}).status_code in (404, 405)
    assert client.get("/static/../../../../etc/passwd").status_code == 404


def test_no_endpoint_takes_a_file_path(env):
    client, _, _ = env
    for path, item in client.get("/openapi.json").json()["paths"].items():
        for op in item.values():
            for p in op.get("parameters", []):
                assert p["name"] in ("q", "k", "image_id"), (path, p["name"])


# -- errors: generic 500, no stack trace -----------------------------------------------------------------------

def test_unexpected_errors_answer_a_generic_500(env, monkeypatch):
    client, coll, app = env

    def boom(*a, **k):
        raise RuntimeError("secret detail at /home/me/private/index.faiss")

    monkeypatch.setattr(app.state.index, "search_vectors", boom)
    monkeypatch.setattr(app.state.index, "record", boom)
    for r in (client.get("/api/search/text", params={"q": "uncached query about a circle"}),
              client.post("/api/search/image", files={"file": ("a.png", (coll / "line" / "0.png").read_bytes(), "image/png")}),
              client.get("/api/thumbnail/12345")):
        assert r.status_code == 500
        assert r.json() == {"detail": "internal server error"}
        assert "Traceback" not in r.text and "secret" not in r.text and "/home" not in r.text


def test_query_and_k_are_bounded(env):
    client, _, _ = env
    assert client.get("/api/search/text", params={"q": "x" * 501}).status_code == 422
    assert client.get("/api/search/text", params={"q": "circle", "k": 101}).status_code == 422
    assert client.get("/api/search/text", params={"q": "   "}).status_code == 422
    labels = ",".join(f"l{i}" for i in range(65))
    r = client.post("/api/classify", files={"file": ("a.png", _png_bytes(40, 40), "image/png")}, data={"labels": labels})
    assert r.status_code == 422 and "at most" in r.json()["detail"]
