"""Shared by the gauntlet files: PNGs of zeros of any size, and the check that every kind is in the docs."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

ROBUSTNESS_DOC = Path(__file__).resolve().parents[1] / "docs" / "robustness.md"


def grey_png(w: int, h: int, depth: int = 8) -> bytes:
    """A black PNG of zeros (1-, 8- or 16-bit grey), compressed row by row (never held whole): a few KB whatever the size."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    z = zlib.compressobj(9)
    row = b"\0" * (1 + (w * depth + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def missing_from_robustness_doc(kinds) -> list[str]:
    text = ROBUSTNESS_DOC.read_text(encoding="utf-8")
    return [k for k in kinds if k not in text]
