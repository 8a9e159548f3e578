"""Small image makers shared by the data tests."""
import io

import numpy as np
from PIL import Image


def _noise(seed: int, size: int = 16, mode: str = "RGB") -> Image.Image:
    rng = np.random.RandomState(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(rng.randint(0, 256, (size, size, channels), dtype=np.uint8), mode)


def _jpeg_bytes(seed: int = 0, size: int = 16) -> bytes:
    buf = io.BytesIO()
    _noise(seed, size).save(buf, "JPEG")
    return buf.getvalue()
