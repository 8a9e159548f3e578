"""What to index: every image file under a folder, or the rows of a caption CSV (``filename,caption``).

A CSV's file names are relative to the CSV's own folder or to an ``images/`` folder next to it (the layout
``clipforge download`` writes); absolute paths are taken as they are. Rows that cannot be used (no file,
a URL, a repeated file) are reported with a reason, like files that do not decode later.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..data.folders import IMAGE_SUFFIXES
from ..errors import ClipforgeError

PATH_COLUMNS = ("filename", "file", "path", "image", "image_path")
CAPTION_COLUMNS = ("caption", "text", "title", "description")


@dataclass(frozen=True)
class SourceItem:
    path: str                 # absolute path of the image file
    caption: str | None = None


def _folder_items(root: Path) -> list[SourceItem]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    return [SourceItem(str(p.resolve())) for p in files]


def _column(fields: list[str], names: tuple[str, ...]) -> str | None:
    lower = {f.strip().lower(): f for f in fields}
    return next((lower[n] for n in names if n in lower), None)


def _csv_items(path: Path) -> tuple[list[SourceItem], list[tuple[str, str]]]:
    """Rows of a caption CSV, read like ``load_caption_csv`` reads them: line by line, so a line that is not UTF-8
    or a quote that never closes is reported on its own line number instead of stopping (or swallowing) the rest."""
    from ..data.captions import _decode_lines, _rows, row_starts
    from ..data.dataset import SkipReport
    items, seen = [], set()
    report = SkipReport()
    lines = _decode_lines(path.read_bytes(), report, path.name)
    fields = next(csv.reader([lines[0][1]])) if lines else []
    pcol, ccol = _column(fields, PATH_COLUMNS), _column(fields, CAPTION_COLUMNS)
    if pcol is None:
        raise ClipforgeError(f"caption CSV '{path}' needs a header with a file column "
                             f"({' or '.join(PATH_COLUMNS[:2])}) and optionally 'caption'; got {fields}")
    pi, ci = fields.index(pcol), fields.index(ccol) if ccol else None
    problems = report.items  # decoding and parsing problems land here, in line order with the rows' own
    for i, row in _rows(lines[1:], report, path.name, row_starts(pi, (path.parent, path.parent / "images"))):
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
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            problems.append((f"{where} {name}", "file not found"))
            continue
        key = str(found.resolve())
        if key in seen:
            problems.append((f"{where} {name}", "file listed twice (first caption kept)"))
            continue
        seen.add(key)
        items.append(SourceItem(key, caption))
    return items, problems


def list_source(source: str | Path) -> tuple[list[SourceItem], list[tuple[str, str]]]:
    """-> (items to embed, [(row or file, reason)] for what cannot be used)."""
    src = Path(source)
    if src.is_dir():
        return _folder_items(src), []
    if src.is_file() and src.suffix.lower() in (".csv", ".tsv"):
        return _csv_items(src)
    if src.is_file() and src.suffix.lower() in IMAGE_SUFFIXES:
        return [SourceItem(str(src.resolve()))], []
    raise ClipforgeError(f"'{source}' is neither an image folder, a caption CSV (filename,caption) nor an image file")
