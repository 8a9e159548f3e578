"""The gauntlet, part 3: the index and the service against hostile files and requests.

``INDEX_KINDS`` and ``SERVE_KINDS`` list the kinds; docs/robustness.md has each with what the user sees.
"""
from __future__ import annotations

import os
import threading

from gauntletutil import grey_png, missing_from_robustness_doc
from imgutil import _noise

# -- the service and the index against hostile files and requests (issue 16) --------------------------------------

INDEX_KINDS = ("symlink to a file outside the image folder (/etc/passwd)", "dangling symlink",
               "symlink to a folder outside the image folder", "SVG without a PNG twin", "SVG with a PNG twin",
               "FIFO named .png", "file that is not an image type (.txt)", "CSV row pointing outside the CSV's folder")
SERVE_KINDS = ("39,000,000 x 1 PNG (extreme aspect ratio)", "36 MP 16-bit PNG", "thumbnail id beyond SQLite integers",
               "foreign Host header (DNS rebinding)", "request header that never completes", "search of an empty index")



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
    r = client.post("/api/search/image", files={"file": ("long.png", grey_png(39_000_000, 1), "image/png")})
    assert r.status_code == 422 and "aspect ratio" in r.json()["detail"], r.text
    r = client.post("/api/search/image", files={"file": ("deep.png", grey_png(6000, 6000, 16), "image/png")})
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


def test_every_index_and_serve_kind_is_listed_in_the_robustness_doc():
    assert not missing_from_robustness_doc([*INDEX_KINDS, *SERVE_KINDS])
