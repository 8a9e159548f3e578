"""Tux Paint stamps (Debian ``tuxpaint-stamps-default``): 785 captioned clip-art images, English + zh_CN.

Next to each ``<name>.png`` sits ``<name>.txt``: its first line is the English caption, then
``<locale>.utf8=<translation>`` lines. ``*_mirror*`` files are flipped copies of other stamps and are
skipped so that a stamp and its mirror never land on both sides of a train/test split. Images have alpha;
the decoder composites them on white.
"""
from __future__ import annotations

from pathlib import Path

from clipforge.errors import ClipforgeError
from clipforge.data.dataset import CaptionDataset, SkipReport

STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
LANGS = {"zh": "zh_CN"}


def parse_stamp_text(text: str) -> tuple[str, dict[str, str]]:
    """Caption file -> (English caption, {locale: translation})."""
    english, translations = "", {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        head, sep, rest = line.partition("=")
        if sep and head.endswith(".utf8") and " " not in head:
            translations[head[: -len(".utf8")]] = " ".join(rest.split())
        elif not english:
            english = " ".join(line.split())
    return english, translations


def load_tux_paint(root: str | Path | None = None) -> CaptionDataset:
    root = Path(root) if root else STAMPS_DIR
    if not root.is_dir():
        raise ClipforgeError(f"Tux Paint stamps not found at '{root}': install them with "
                             "'sudo apt-get install tuxpaint-stamps-default' (or pass tux-paint:<dir>)")
    report = SkipReport()
    paths, captions, zh = [], [], []
    for png in sorted(root.rglob("*.png")):
        if "_mirror" in png.stem:
            continue
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            report.add(str(png), "no caption file (.txt) next to the image")
            continue
        try:
            english, tr = parse_stamp_text(txt.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            report.add(str(txt), "caption file is not UTF-8")
            continue
        if not english:
            report.add(str(txt), "caption file has no English caption line")
            continue
        paths.append(png)
        captions.append([english])
        zh.append([tr[LANGS["zh"]]] if tr.get(LANGS["zh"]) else [])
    return CaptionDataset("tux-paint", paths, captions, {"zh": zh}, report)


# Folder names that are not words; every other category is named by its folder.
CATEGORY_NAMES = {"naturalforces": "natural forces"}


def stamp_category(path: str | Path, root: str | Path | None = None) -> str:
    """The stamp category of an image: its first folder under the stamps root ("animals", "vehicles", ...),
    in words (``CATEGORY_NAMES``). Class labels for the transfer benchmark."""
    rel = Path(path).resolve().relative_to(Path(root or STAMPS_DIR).resolve())
    folder = rel.parts[0] if len(rel.parts) > 1 else ""
    return CATEGORY_NAMES.get(folder, folder)
