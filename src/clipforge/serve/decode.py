"""Decoding an uploaded (or indexed) image in bounded memory.

The pixel cap alone does not bound memory: a 39,000,000 x 1 PNG is 38 KB and under it, yet its RGB copy, the
tower's resize of it and their float tensors took 1.5 GB; a 36 MP 16-bit PNG took 0.6 GB in the float64 path of
a plain ``to_rgb``. So, in this order, each from what the header says before a row is decoded:

1. too many pixels -> 413 (as before); an aspect ratio over ``max_aspect`` -> 422 (nothing that extreme is a
   photo, and no tower reads it: it would be cropped to a sliver);
2. JPEGs decode at a reduced scale (``Image.draft``: the DCT gives 1/2, 1/4, 1/8 for free) when larger than
   ``keep_pixels``; then the bytes the decoded image would take (PIL's own layout: 1, 2 or 4 bytes a pixel)
   must be under ``max_decoded_bytes`` -> else 413;
3. after decoding, the image is shrunk to at most ``keep_pixels`` *before* any mode conversion, so the
   conversions to RGB run on a small image.

With the service's decode pool (``decode_workers`` at once, app.py) the memory of decoding is at most about
``decode_workers x max_decoded_bytes``, whatever arrives.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from clipforge.data.images import to_rgb


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = 40_000_000
    max_aspect: float = 50.0
    max_decoded_bytes: int = 128 * 1024 * 1024
    keep_pixels: int = 4_000_000


class DecodeRefused(Exception):
    """Why an image is not decoded: ``status`` (413 / 415 / 422) and a message for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def bytes_per_pixel(mode: str) -> int:
    """What PIL allocates per pixel for ``mode`` (multi-band images are stored 4 bytes a pixel)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _shrink(img: Image.Image, keep_pixels: int) -> Image.Image:
    w, h = img.size
    if w * h <= keep_pixels:
        return img
    f = math.sqrt(w * h / keep_pixels)
    size = (max(1, int(w / f)), max(1, int(h / f)))
    # BOX is an exact area average; PIL's resize does not take it for 16-bit modes, whose BILINEAR also averages
    # over the whole footprint when shrinking.
    return img.resize(size, Image.BILINEAR if img.mode.startswith("I;16") else Image.BOX)


def decode_bounded(data: bytes | io.IOBase | str, limits: DecodeLimits = DecodeLimits()) -> Image.Image:
    """Bytes, a file object or a path -> a small enough RGB image, or DecodeRefused saying why not."""
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                w, h = im.size
                if w * h > limits.max_pixels:
                    raise DecodeRefused(413, f"image is {w}x{h} = {w * h} pixels, over the limit of "
                                             f"{limits.max_pixels} (decompression bomb?)")
                if max(w, h) > limits.max_aspect * max(1, min(w, h)):
                    raise DecodeRefused(422, f"image is {w}x{h}: an aspect ratio over {limits.max_aspect:g}:1 "
                                             "is not used (crop it to the part that matters)")
                if im.format == "JPEG" and w * h > limits.keep_pixels:
                    f = math.sqrt(w * h / limits.keep_pixels)
                    im.draft(None, (max(1, int(w / f)), max(1, int(h / f))))
                need = im.size[0] * im.size[1] * bytes_per_pixel(im.mode)
                if need > limits.max_decoded_bytes:
                    raise DecodeRefused(413, f"image is {w}x{h} {im.mode}: {need >> 20} MB decoded, over the limit "
                                             f"of {limits.max_decoded_bytes >> 20} MB; send it smaller or as JPEG")
                if getattr(im, "is_animated", False) and getattr(im, "n_frames", 1) > 1:
                    im.seek(0)
                im.load()
                img = _shrink(im, limits.keep_pixels)
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except DecodeRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DecodeRefused(413, "image has too many pixels (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise DecodeRefused(415, "not an image (unrecognised format); send PNG, JPEG, WebP, GIF or BMP") from None
    except FileNotFoundError:
        raise DecodeRefused(404, "file not found") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DecodeRefused(422, f"cannot decode: {e.__class__.__name__}") from None
