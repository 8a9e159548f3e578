"""The web service through FastAPI's TestClient: search, zero-shot, similarity, thumbnails, page, batching."""
import asyncio
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import useutil
from clipforge.cli import app as cli_app
from clipforge.index import ImageIndex
from clipforge.model.dual_encoder import DualEncoder
from clipforge.serve import ServeSettings, create_app
from clipforge.serve.app import parse_labels
from clipforge.serve.batcher import BatchRunner
from clipforge.model.similarity import Similarity


@pytest.fixture(scope="module")
def served():
    index_dir, coll = useutil.shared_index()
    app = create_app(index_dir, ServeSettings())
    return TestClient(app, raise_server_exceptions=False, base_url="http://localhost"), coll, app


def _png(path) -> bytes:
    return path.read_bytes()


def test_health_and_openapi_docs(served):
    client, _, _ = served
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["images"] == 24 and h["index"]["kind"] == "flat" and h["dim"] == 384
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search/text", "/api/search/image", "/api/classify", "/api/similarity", "/api/thumbnail/{image_id}",
            "/api/health"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_text_search_returns_the_right_shapes(served):
    client, _, app = served
    r = client.get("/api/search/text", params={"q": "a photo of a circle", "k": 6})
    assert r.status_code == 200
    res = r.json()["results"]
    assert len(res) == 6 and res[0]["score"] >= res[-1]["score"]
    idx = app.state.index
    assert all("/circle/" in idx.record(x["id"]).path for x in res)
    assert "path" not in res[0] and res[0]["thumbnail"] == f"/api/thumbnail/{res[0]['id']}"   # no server paths out


def test_chinese_query_and_labels_are_unicode_clean(served):
    client, coll, _ = served
    r = client.get("/api/search/text", params={"q": "一只红色的圆形 🟥", "k": 5})
    assert r.status_code == 200 and r.json()["query"] == "一只红色的圆形 🟥" and len(r.json()["results"]) == 5
    r = client.post("/api/classify", files={"file": ("t.png", _png(coll / "circle" / "1.png"), "image/png")},
                    data={"labels": "圆形，正方形、三角形\ncircle"})
    assert r.status_code == 200
    labels = r.json()["labels"]
    assert {x["label"] for x in labels} == {"圆形", "正方形", "三角形", "circle"}
    assert sum(x["probability"] for x in labels) == pytest.approx(1.0, abs=1e-5)


def test_image_search_finds_the_same_image_first(served):
    client, coll, app = served
    r = client.post("/api/search/image", files={"file": ("x.png", _png(coll / "square" / "4.png"), "image/png")},
                    data={"k": "4"})
    assert r.status_code == 200
    res = r.json()["results"]
    assert app.state.index.record(res[0]["id"]).path.endswith("square/4.png") and res[0]["score"] > 0.999
    assert all("/square/" in app.state.index.record(x["id"]).path for x in res)


def test_zero_shot_classification_of_an_upload(served):
    client, coll, _ = served
    for shape in ("triangle", "line"):
        r = client.post("/api/classify", files={"file": ("x.png", _png(coll / shape / "2.png"), "image/png")},
                        data={"labels": "circle, square, triangle, line"})
        assert r.status_code == 200
        top = r.json()["labels"][0]
        assert top["label"] == shape and top["probability"] > 0.5, r.json()
    r = client.post("/api/classify", files={"file": ("x.png", _png(coll / "line" / "2.png"), "image/png")},
                    data={"labels": " , ,"})
    assert r.status_code == 422 and "label" in r.json()["detail"]


def test_parse_labels_splits_on_ascii_and_cjk_separators():
    s = ServeSettings()
    assert parse_labels("cat, dog;猫，狗、鸟\n  big   cat ,cat", s) == ["cat", "dog", "猫", "狗", "鸟", "big cat"]


def test_similarity_endpoint_library_and_cli_agree(served):
    client, coll, app = served
    img = coll / "circle" / "0.png"
    http = client.post("/api/similarity", files={"image_a": ("c.png", _png(img), "image/png")},
                       data={"text_b": "a circle"}).json()
    lib = Similarity(app.state.index.model).pair(Image.open(img), "a circle")
    r = CliRunner().invoke(cli_app, ["similarity", "--model", str(useutil.trained_model_dir()), "--image", str(img),
                                     "--text", "a circle"])
    assert r.exit_code == 0, r.output
    cli = json.loads(r.stdout.strip().splitlines()[-1])
    assert http["pair"] == lib["pair"] == cli["pair"] == "image-text"
    assert http["score"] == pytest.approx(lib["score"], abs=1e-5) == pytest.approx(cli["score"], abs=1e-5)
    assert http["score"] > 0.5 and "logit" in http
    tt = client.post("/api/similarity", data={"text_a": "a circle", "text_b": "a round disc"}).json()
    assert tt["pair"] == "text-text" and tt["score"] == pytest.approx(
        Similarity(app.state.index.model).pair("a circle", "a round disc")["score"], abs=1e-5)
    ii = client.post("/api/similarity", files={"image_a": ("a.png", _png(img), "image/png"),
                                               "image_b": ("b.png", _png(coll / "circle" / "3.png"), "image/png")}).json()
    far = client.post("/api/similarity", files={"image_a": ("a.png", _png(img), "image/png"),
                                                "image_b": ("b.png", _png(coll / "line" / "3.png"), "image/png")}).json()
    assert ii["pair"] == "image-image" and ii["score"] > far["score"]
    bad = client.post("/api/similarity", data={"text_a": "x"})
    assert bad.status_code == 422 and "text_b or image_b" in bad.json()["detail"]


def test_similarity_matrices_of_the_library():
    model = DualEncoder.from_pretrained(useutil.trained_model_dir())
    _, coll = useutil.shared_index()
    sim = Similarity(model)
    shapes = ["circle", "square", "triangle", "line"]
    m = sim.image_text_matrix([coll / s / "1.png" for s in shapes], [f"a {s}" for s in shapes])
    assert m.shape == (4, 4) and (m.argmax(1) == np.arange(4)).all()
    tt = sim.text_text_matrix(["a circle"], ["a circle", "a line"])
    assert tt[0, 0] == pytest.approx(1.0, abs=1e-5) and tt[0, 1] < 1.0
    assert sim.image_image_matrix([coll / "line" / "0.png"], [coll / "line" / "0.png"])[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_thumbnail_is_a_small_jpeg(served):
    client, _, _ = served
    r = client.get("/api/thumbnail/3")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (48, 48)


def test_page_and_static_files_are_served(served):
    client, _, _ = served
    page = client.get("/")
    assert page.status_code == 200 and 'id="query"' in page.text and "app.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "/api/search/text" in js.text and ".innerHTML" not in js.text
    assert client.get("/static/style.css").status_code == 200


def test_concurrent_text_queries_share_one_forward_pass():
    seen = []

    def fn(items):
        seen.append(list(items))
        return [x * 2 for x in items]

    async def burst():
        runner = BatchRunner(fn, max_batch=8)
        out = await asyncio.gather(*(runner.submit(i) for i in range(20)))
        runner.close()
        return out

    assert asyncio.run(burst()) == [i * 2 for i in range(20)]
    assert [len(b) for b in seen] == [8, 8, 4]


def test_two_text_workers_run_two_batches_at_once():
    import threading
    inside, peak, lock = [0], [0], threading.Lock()

    def fn(items):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        import time
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        return items

    async def burst():
        runner = BatchRunner(fn, max_batch=2, workers=2)
        out = await asyncio.gather(*(runner.submit(i) for i in range(8)))
        runner.close()
        return out, runner.batches

    out, batches = asyncio.run(burst())
    assert out == list(range(8)) and batches == 4 and peak[0] == 2


def test_batched_text_search_equals_one_by_one():
    index_dir, _ = useutil.shared_index()
    app = create_app(index_dir, ServeSettings(query_cache=0, text_workers=1))
    queries = ["a circle", "a square", "一个三角形", "a line", "a circle"]

    async def burst():
        return await asyncio.gather(*(app.state.runner.submit((q, 3)) for q in queries))

    batched = asyncio.run(burst())
    assert app.state.runner.batches == 1
    ix = ImageIndex.load(index_dir)
    for q, res in zip(queries, batched):
        assert [x["id"] for x in res] == [h.id for h in ix.search_text(q, 3)]


def test_onnx_text_runtime_gives_the_torch_numbers(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from clipforge.serve.fasttext import text_encoder
    monkeypatch.setenv("CLIPFORGE_ONNX_CACHE", str(tmp_path))
    model = DualEncoder.from_pretrained(useutil.trained_model_dir())
    fast, slow = text_encoder(model, "onnx"), text_encoder(model, "torch")
    assert fast.runtime == "onnx" and slow.runtime == "torch" and list(tmp_path.glob("text-*.onnx"))
    texts = ["a circle", "a very long query about a small red triangle lying on a wooden table at night", "一个圆形", "x"]
    np.testing.assert_allclose(fast(texts), slow(texts), atol=2e-5)
    index_dir, _ = useutil.shared_index()
    client = TestClient(create_app(index_dir, ServeSettings(text_runtime="onnx")), base_url="http://localhost")
    assert client.get("/api/health").json()["text_runtime"] == "onnx"
    res = client.get("/api/search/text", params={"q": "a square", "k": 3}).json()["results"]
    assert [r["id"] for r in res] == [h.id for h in ImageIndex.load(index_dir).search_text("a square", 3)]
