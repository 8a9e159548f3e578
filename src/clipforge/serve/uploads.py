"""Upload safety: a body-size limit for every request, and image decoding that refuses what it should.

* ``BodyLimit`` (pure ASGI middleware) answers 413 before the app runs when Content-Length is over the limit,
  and stops a chunked upload (no Content-Length) as soon as its bytes go over it.
* ``decode_upload`` reads only the header first and refuses images with too many pixels (decompression
  bombs), an extreme aspect ratio or too many decoded bytes before decoding a single row (decode.py); non-images
  get 415, undecodable images 422, each with a message.
"""
from __future__ import annotations

import json

from fastapi import HTTPException
from PIL import Image

from clipforge.serve.decode import DecodeLimits, DecodeRefused, decode_bounded


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


def decode_upload(data: bytes, max_pixels: int | DecodeLimits) -> Image.Image:
    """Bytes of an uploaded file -> RGB image, or an HTTPException (413 / 415 / 422) that says why not
    (decode.py bounds the memory it takes)."""
    if not data:
        raise HTTPException(422, "the uploaded file is empty")
    limits = max_pixels if isinstance(max_pixels, DecodeLimits) else DecodeLimits(max_pixels=int(max_pixels))
    try:
        return decode_bounded(data, limits)
    except DecodeRefused as e:
        if e.status == 415:
            raise HTTPException(415, f"the uploaded file is {e}") from None
        if e.status == 422 and str(e).startswith("cannot decode"):
            raise HTTPException(422, f"the uploaded image cannot be decoded ({str(e).split(': ', 1)[-1]})") from None
        raise HTTPException(e.status, str(e)) from None
