"""Upload safety: a body-size limit for every request, and image decoding that refuses what it should.

* ``BodyLimit`` (pure ASGI middleware) answers 413 before the app runs when Content-Length is over the limit,
  and stops a chunked upload (no Content-Length) as soon as its bytes go over it.
* ``decode_upload`` reads only the header first and refuses images with too many pixels (decompression
  bombs) before decoding a single row; non-images get 415, undecodable images 422, each with a message.
"""
from __future__ import annotations

import io
import json
import warnings

from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError

from ..data.images import load_image


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def _refuse(self, send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await self._refuse(send, 400, "bad Content-Length header")
            if n > self.max_bytes:
                return await self._refuse(send, 413, f"request body of {n} bytes is over the limit of {self.max_bytes} bytes")
        state = {"seen": 0, "over": False, "started": False}

        async def limited_receive():
            msg = await receive()
            if msg["type"] == "http.request":
                state["seen"] += len(msg.get("body", b""))
                if state["seen"] > self.max_bytes:
                    state["over"] = True
                    raise _TooLarge()
            return msg

        async def guarded_send(msg):
            if state["over"]:
                return  # the app's answer to a body we cut off (e.g. a 400 from the form parser) is dropped
            if msg["type"] == "http.response.start":
                state["started"] = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        if state["over"] and not state["started"]:
            await self._refuse(send, 413, f"request body is over the limit of {self.max_bytes} bytes")


def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes of an uploaded file -> RGB image, or an HTTPException (413 / 415 / 422) that says why not."""
    if not data:
        raise HTTPException(422, "the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPException(413, "image has too many pixels (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise HTTPException(415, "the uploaded file is not an image (unrecognised format); send PNG, JPEG, WebP, GIF or BMP") from None
    except Exception:  # noqa: BLE001 - any header parse failure is the client's file
        raise HTTPException(422, "the uploaded image cannot be decoded") from None
    if w * h > max_pixels:
        raise HTTPException(413, f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                                 "(decompression bomb?)")
    img, reason = load_image(io.BytesIO(data))
    if img is None:
        if reason.startswith("not an image"):
            raise HTTPException(415, f"the uploaded file is {reason}")
        if reason.startswith("image too large"):
            raise HTTPException(413, reason)
        raise HTTPException(422, f"the uploaded image cannot be used: {reason.split(':')[0]}")
    return img
