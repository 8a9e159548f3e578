"""Robust image decoding: every failure becomes a reason string, never an exception in a long job.

Why composite on white: packaged sets (Tux Paint, emoji) have alpha; a transparent pixel's RGB is
arbitrary (often black), which would change what the image tower sees.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# ~90 MP: larger images are refused as decompression bombs rather than decoded into gigabytes.
MAX_PIXELS = 90_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, P, LA, RGBA, CMYK, I;16) -> RGB, transparency composited on white."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img.convert("RGBA")).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() or 1.0
        img = Image.fromarray((arr / hi * 255).astype(np.uint8))
    return img.convert("RGB")


def load_image(source, min_side: int = 1) -> tuple[Image.Image | None, str | None]:
    """Open, verify and decode an image. Returns ``(rgb_image, None)`` or ``(None, reason)``."""
    try:
        if isinstance(source, (str, Path)) and Path(source).stat().st_size == 0:
            return None, "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                # The warnings filter above is process-wide, not per thread: when decoding runs in a thread
                # pool another thread can reset it mid-call, so the size is also checked here, from the header.
                if img.width * img.height > MAX_PIXELS:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height}")
                if getattr(img, "is_animated", False) and getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = to_rgb(img)
    except FileNotFoundError:
        return None, "file not found"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, f"image too large (over {MAX_PIXELS} pixels; decompression bomb?)"
    except UnidentifiedImageError:
        return None, "not an image (unrecognised format)"
    except (OSError, ValueError, SyntaxError) as e:
        return None, f"cannot decode: {e.__class__.__name__}: {e}"[:200]
    if min(rgb.size) < min_side:
        return None, f"too small ({rgb.size[0]}x{rgb.size[1]})"
    return rgb, None
