"""The web service: search an index by text or image, zero-shot classify an upload, compare pairs, thumbnails.

``create_app(index)`` returns a FastAPI app (OpenAPI docs at /docs); ``clipforge serve INDEX`` runs it with
uvicorn on 127.0.0.1. The page at / (static/index.html + app.js, no build step) uses the same JSON API.

Safety rules, each with a test in tests/test_serve_safety.py or tests/test_serve_hardening.py:
  * request bodies over ``max_upload_bytes`` get 413 (uploads.BodyLimit);
  * a non-image upload gets 415, an undecodable image 422, each with a message;
  * images over ``max_pixels`` (decompression bombs), over ``max_aspect`` or over ``max_decoded_mb`` decoded are
    refused before they are decoded, and at most ``decode_workers`` images are decoded at once (decode.py);
  * a request whose Host header is not an allowed name gets 400 (Starlette's TrustedHostMiddleware; by default the
    loopback names, so a page on another origin cannot reach a local server by DNS rebinding);
  * thumbnails are served only for ids in the index: the client names an id (0 .. 2^63-1), never a path;
  * any unexpected error answers a generic 500 JSON body: no stack trace, no internal path.

The index is followed live (index/live.py): an ``index add`` from another process is served from the next
request on. The API pages (/docs, /redoc) load their scripts from this server (the assets of the pinned
fastapi-offline package), so they work with no network.
"""
from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from clipforge.data.images import MAX_PIXELS
from clipforge.data.prompts import split_labels
from clipforge.errors import ClipforgeError
from clipforge.evaluate.zeroshot import zero_shot_classifier
from clipforge.index import ImageIndex, LiveIndex
from clipforge.index.store import MAX_ID
from clipforge.model.similarity import Image as ImageItem
from clipforge.model.similarity import Similarity
from clipforge.model.similarity import Text as TextItem
from clipforge.serve.batcher import LRU, BatchRunner
from clipforge.serve.decode import DecodeLimits, DecodeRefused, decode_bounded
from clipforge.serve.docs import add_offline_docs
from clipforge.serve.fasttext import text_encoder
from clipforge.serve.uploads import BodyLimit, decode_upload

log = logging.getLogger("clipforge.serve")
STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                           "script-src 'self'; object-src 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


@dataclass
class ServeSettings:
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_k: int = 100
    max_labels: int = 64
    max_label_chars: int = 100
    max_query_chars: int = 500
    thumbnail_size: int = 256
    max_batch: int = 64
    query_cache: int = 4096      # text embeddings of recent queries kept (0 = none)
    text_workers: int = 2        # batches embedded at the same time, each in its own thread (~ one per core)
    text_runtime: str = "auto"   # text tower on 'onnx' (ONNX Runtime), 'torch', or 'auto' (onnx when installed)
    thumbnail_cache: int = 2048
    allowed_hosts: tuple = LOCAL_HOSTS  # Host header names served ("*": any); `clipforge serve` picks by bind address
    max_aspect: float = 50.0     # longer side over shorter side, from the header
    max_decoded_mb: int = 128    # memory a decoded upload may take (PIL's layout), from the header
    decode_workers: int = 2      # images decoded (and embedded) at the same time

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(max_pixels=self.max_pixels, max_aspect=self.max_aspect,
                            max_decoded_bytes=int(self.max_decoded_mb * 1024 * 1024))


def parse_labels(text: str, settings: ServeSettings) -> list[str]:
    """'cat, dog\\n猫，狗' -> ['cat', 'dog', '猫', '狗'] (commas, semicolons, newlines, ideographic commas)."""
    labels = split_labels(text)
    if not labels:
        raise HTTPException(422, "give at least one label (comma- or newline-separated)")
    if len(labels) > settings.max_labels:
        raise HTTPException(422, f"at most {settings.max_labels} labels, got {len(labels)}")
    long = [lab for lab in labels if len(lab) > settings.max_label_chars]
    if long:
        raise HTTPException(422, f"labels longer than {settings.max_label_chars} characters: {long[0][:40]}...")
    return labels


def _hit_json(h) -> dict:
    return {"id": h.id, "score": round(h.score, 6), "name": Path(h.path).name, "caption": h.caption,
            "width": h.width, "height": h.height, "thumbnail": f"/api/thumbnail/{h.id}"}


def create_app(index: ImageIndex | str | Path, settings: ServeSettings | None = None, model=None) -> FastAPI:
    """The app over an index (an ImageIndex or its folder). ``model`` defaults to the index's own model."""
    s = settings or ServeSettings()
    if isinstance(index, LiveIndex):
        index = index.current()
    first = index if isinstance(index, ImageIndex) else ImageIndex.load(index, model=model)
    if model is not None and isinstance(index, ImageIndex):
        first.use_model(model)
    m = first.model
    idx = LiveIndex(first)
    limits = s.decode_limits()
    # Thumbnails decode the operator's own indexed files: only their memory is bounded, shrunk early to the size out.
    thumb_limits = DecodeLimits(max_pixels=MAX_PIXELS, max_aspect=float("inf"), max_decoded_bytes=4 * MAX_PIXELS,
                                keep_pixels=4 * s.thumbnail_size ** 2)
    image_slots = threading.BoundedSemaphore(max(1, s.decode_workers))
    sim = Similarity(m)
    encode_texts = text_encoder(m, s.text_runtime)
    query_cache, thumbs, classifiers = LRU(s.query_cache), LRU(s.thumbnail_cache), LRU(32)

    def text_batch(items: list[tuple[str, int]]) -> list[list]:
        texts = list(dict.fromkeys(t for t, _ in items))
        vec = {t: query_cache.get(t) for t in texts}
        todo = [t for t in texts if vec[t] is None]
        if todo:
            for t, v in zip(todo, encode_texts(todo)):
                vec[t] = v
                query_cache.put(t, v)
        hits = idx.search_vectors(np.stack([vec[t] for t, _ in items]), max(k for _, k in items))
        return [[_hit_json(h) for h in row[:k]] for row, (_, k) in zip(hits, items)]

    runner = BatchRunner(text_batch, s.max_batch, "clipforge-text", s.text_workers)
    app = FastAPI(title="clipforge", version="0.1.0", docs_url=None, redoc_url=None,
                  description="Search an image collection by text or image, and classify images zero-shot against "
                              "your own labels, with a clipforge model.")
    app.state.index, app.state.settings, app.state.runner = idx, s, runner
    app.add_middleware(BodyLimit, max_bytes=s.max_upload_bytes)
    if "*" not in s.allowed_hosts:  # added last = runs first: a foreign Host is answered before anything else
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(s.allowed_hosts), www_redirect=False)
    add_offline_docs(app)

    @app.exception_handler(ClipforgeError)
    async def _user_error(request: Request, exc: ClipforgeError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        log.exception("error in %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    def _read(upload: UploadFile) -> bytes:
        data = upload.file.read(s.max_upload_bytes + 1)
        if len(data) > s.max_upload_bytes:
            raise HTTPException(413, f"upload is over the limit of {s.max_upload_bytes} bytes")
        return data

    def _image(upload: UploadFile):
        data = _read(upload)
        with image_slots:
            return decode_upload(data, limits)

    def _embed(upload: UploadFile) -> np.ndarray:
        """Decode and embed an upload inside one of the ``decode_workers`` slots (both scale with the image)."""
        data = _read(upload)
        with image_slots:
            return m.encode_image([decode_upload(data, limits)])

    # -- pages ------------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -- API --------------------------------------------------------------------------------------------------
    @app.get("/api/health", tags=["service"])
    def health():
        return {"status": "ok", "images": len(idx), "dim": idx.dim, "index": idx.spec.to_dict(),
                "model": {"image_tower": m.image_tower.tower_id, "text_tower": m.text_tower.tower_id},
                "text_runtime": encode_texts.runtime,
                "text_batches": {"batches": runner.batches, "queries": runner.items}}

    @app.get("/api/search/text", tags=["search"])
    async def search_text(q: str = Query(..., min_length=1, max_length=s.max_query_chars, description="the text query (any language the text tower reads)"),
                          k: int = Query(20, ge=1, le=s.max_k)):
        """Text -> images: the ``k`` indexed images closest to the query, best first (score = cosine)."""
        query = q.strip()
        if not query:
            raise HTTPException(422, "the query is empty")
        # A plain JSONResponse: the hits are already JSON types, so FastAPI's encoder walk is skipped.
        return JSONResponse({"query": query, "results": await runner.submit((query, k))})

    @app.post("/api/search/image", tags=["search"])
    def search_image(file: UploadFile = File(..., description="an image"), k: int = Form(20, ge=1, le=s.max_k)):
        """Image -> images: the ``k`` indexed images closest to the upload."""
        hits = idx.search_vectors(_embed(file), k)[0]
        return {"results": [_hit_json(h) for h in hits]}

    @app.post("/api/classify", tags=["zero-shot"])
    def classify(file: UploadFile = File(..., description="an image"),
                 labels: str = Form(..., description="class names, comma- or newline-separated (any script)")):
        """Zero-shot classification of the upload against your labels: probabilities (softmax over the model's
        logits) and cosine scores, best first. The prompts are those of ``clipforge classify`` (one classifier,
        evaluate.zeroshot.zero_shot_classifier): Chinese labels get Chinese templates, other labels English ones."""
        names = parse_labels(labels, s)
        vec = _embed(file)
        key = tuple(names)
        zs = classifiers.get(key)
        if zs is None:
            zs = zero_shot_classifier(m, names)
            classifiers.put(key, zs)
        scores = zs.scores(vec)[0]
        p = zs.probabilities(scores)
        order = np.argsort(-p)
        return {"labels": [{"label": names[i], "probability": float(p[i]), "score": float(scores[i])} for i in order]}

    @app.post("/api/similarity", tags=["similarity"])
    def similarity(text_a: str | None = Form(None, max_length=s.max_query_chars),
                   text_b: str | None = Form(None, max_length=s.max_query_chars),
                   image_a: UploadFile | None = File(None), image_b: UploadFile | None = File(None)):
        """Similarity of one pair: give side a as ``text_a`` or ``image_a`` and side b as ``text_b`` or ``image_b``
        (image-text, text-text or image-image)."""
        sides = []
        for name, text, image in (("a", text_a, image_a), ("b", text_b, image_b)):
            if (text is None or not text.strip()) == (image is None):
                raise HTTPException(422, f"give exactly one of text_{name} or image_{name}")
            sides.append(TextItem(text.strip()) if image is None else ImageItem(_image(image)))
        return sim.pair(*sides)

    @app.get("/api/thumbnail/{image_id}", tags=["images"], responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(image_id: int = PathParam(..., ge=0, le=MAX_ID, description="an id from a search result")):
        """A JPEG thumbnail of an indexed image. Only ids of the index are served; no path comes from the client."""
        rec = idx.record(image_id)
        if rec is None:
            raise HTTPException(404, "no image with this id in the index")
        key = (rec.id, rec.sha256)  # a rebuilt index may give the id to another image
        data = thumbs.get(key)
        if data is None:
            try:
                with image_slots:
                    img = decode_bounded(rec.path, thumb_limits)
            except DecodeRefused:
                raise HTTPException(404, "the indexed image is no longer readable") from None
            img.thumbnail((s.thumbnail_size, s.thumbnail_size))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=85)
            data = buf.getvalue()
            thumbs.put(key, data)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app
