"""What to index: every image file under a folder, the rows of a caption CSV (``filename,caption``), or the
samples of WebDataset shards (``wds:<shards>``, unpacked once into the user cache by ``data/wds.py``).

A CSV's file names are relative to the CSV's own folder or to an ``images/`` folder next to it (the layout
``clipforge download`` writes); absolute paths are taken as they are if they lie under the CSV's folder. Rows that
cannot be used (no file, a URL, a repeated file) are reported with a reason, like files that do not decode later.

No file outside the image root (the folder, or the CSV's folder) is ever opened: a path is resolved
(``os.path.realpath``, which reads links but opens nothing) and checked before anything reads it, so a collection
whose symlinks point at ``/etc/shadow`` costs nothing and says so. Every file of a folder that is not indexed is
in the report with its reason (a dangling symlink, an SVG, a FIFO, a text file); hidden files and folders (names
starting with a dot) are not looked at.
"""
from __future__ import annotations

import csv
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from clipforge.data.folders import IMAGE_SUFFIXES
from clipforge.errors import ClipforgeError

PATH_COLUMNS = ("filename", "file", "path", "image", "image_path")
CAPTION_COLUMNS = ("caption", "text", "title", "description")


@dataclass(frozen=True)
class SourceItem:
    path: str                 # absolute path of the image file
    caption: str | None = None


OUTSIDE = "a symlink to a file outside the image folder (not opened)"


def inside(base: str, real: str) -> bool:
    return os.path.commonpath([base, real]) == base


def _kind(mode: int) -> str:
    return "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else \
        "a device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) else "a folder" if stat.S_ISDIR(mode) else "a special file"


def check_file(path: Path, base: str, outside: str = OUTSIDE) -> tuple[str | None, str | None]:
    """-> (real path, None) for a regular file under ``base``, else (None, why not); opens nothing."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        if os.path.islink(path):
            return None, "a dangling symlink (its target does not exist)"
        return None, "file not found"
    if not inside(base, real):
        return None, outside
    mode = os.stat(real).st_mode
    if not stat.S_ISREG(mode):
        return None, f"not a regular file ({_kind(mode)})"
    return real, None


def _not_an_image(p: Path) -> str:
    if p.suffix.lower() == ".svg":
        twin = next((t for t in (p.with_suffix(".png"), p.with_suffix(".PNG")) if t.is_file()), None)
        if twin is not None:
            return f"an SVG (vector) image: its PNG twin {twin.name} is indexed instead"
        return "an SVG (vector) image with no PNG twin: clipforge reads raster images; convert it to PNG to index it"
    return f"not an image file type ({p.suffix or 'no suffix'}); indexed are {', '.join(sorted(IMAGE_SUFFIXES))}"


def _folder_items(root: Path) -> tuple[list[SourceItem], list[tuple[str, str]]]:
    base = os.path.realpath(root)
    items, problems = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in list(dirnames):  # a symlinked folder is listed by os.walk but not entered: say so
            p = Path(dirpath) / d
            if p.is_symlink():
                dirnames.remove(d)
                real = os.path.realpath(p)
                problems.append((str(p), "a symlink to a folder outside the image folder (not followed)"
                                 if not inside(base, real) else "a symlink to a folder (not followed)"))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            real, why = check_file(p, base)
            if why is None and p.suffix.lower() not in IMAGE_SUFFIXES:
                why = _not_an_image(p)
            if why is not None:
                problems.append((str(p), why))
            else:
                items.append(SourceItem(real))
    return items, problems


def _column(fields: list[str], names: tuple[str, ...]) -> str | None:
    lower = {f.strip().lower(): f for f in fields}
    return next((lower[n] for n in names if n in lower), None)


def _csv_items(path: Path) -> tuple[list[SourceItem], list[tuple[str, str]]]:
    """Rows of a caption CSV, read like ``load_caption_csv`` reads them: line by line, so a line that is not UTF-8
    or a quote that never closes is reported on its own line number instead of stopping (or swallowing) the rest."""
    from clipforge.data.captions import decode_lines, csv_rows, row_starts
    from clipforge.data.dataset import SkipReport
    items, seen = [], set()
    base = os.path.realpath(path.parent)
    report = SkipReport()
    lines = decode_lines(path.read_bytes(), report, path.name)
    fields = next(csv.reader([lines[0][1]])) if lines else []
    pcol, ccol = _column(fields, PATH_COLUMNS), _column(fields, CAPTION_COLUMNS)
    if pcol is None:
        raise ClipforgeError(f"caption CSV '{path}' needs a header with a file column "
                             f"({' or '.join(PATH_COLUMNS[:2])}) and optionally 'caption'; got {fields}")
    pi, ci = fields.index(pcol), fields.index(ccol) if ccol else None
    problems = report.items  # decoding and parsing problems land here, in line order with the rows' own
    for i, row in csv_rows(lines[1:], report, path.name, row_starts(pi, (path.parent, path.parent / "images"))):
        name = row[pi].strip() if pi < len(row) else ""
        caption = (" ".join(row[ci].split()) or None) if ci is not None and ci < len(row) else None
        where = f"{path.name}:{i}"
        if not name:
            problems.append((where, "empty file name"))
            continue
        if name.lower().startswith(("http://", "https://")):
            problems.append((f"{where} {name}", "a URL, not a file: fetch it first with 'clipforge download'"))
            continue
        p = Path(name)
        candidates = [p] if p.is_absolute() else [path.parent / p, path.parent / "images" / p]
        found = next((c for c in candidates if os.path.lexists(c)), candidates[0])
        key, why = check_file(found, base, f"outside the CSV's folder {path.parent} (not opened): "
                                           "list only files under the CSV's folder")
        if why is not None:
            problems.append((f"{where} {name}", why))
            continue
        if key in seen:
            problems.append((f"{where} {name}", "file listed twice (first caption kept)"))
            continue
        seen.add(key)
        items.append(SourceItem(key, caption))
    return items, problems


def list_source(source: str | Path) -> tuple[list[SourceItem], list[tuple[str, str]]]:
    """-> (items to embed, [(row or file, reason)] for what cannot be used)."""
    if str(source).startswith("wds:"):               # WebDataset shards: images unpacked once (data/wds.py)
        from clipforge.data.wds import load_wds
        ds = load_wds(str(source), require_caption=False)
        return [SourceItem(str(p), caps[0] if caps else None) for p, caps in zip(ds.paths, ds.captions)], \
            list(ds.skipped.items)
    src = Path(source)
    if src.is_dir():
        return _folder_items(src)
    if src.is_file() and src.suffix.lower() in (".csv", ".tsv"):
        return _csv_items(src)
    if src.is_file() and src.suffix.lower() in IMAGE_SUFFIXES:
        return [SourceItem(str(src.resolve()))], []
    raise ClipforgeError(f"'{source}' is neither an image folder, a caption CSV (filename,caption), an image file "
                         "nor WebDataset shards (wds:<folder or pattern>)")
