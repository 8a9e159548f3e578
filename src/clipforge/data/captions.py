"""Image-caption data: one image, one or more captions (per language), and a report of what was left out.

Where captions come from:
* a CSV ``filename,caption`` (the seed "Contrastive" layout ``datasets/{train,valid}/images`` +
  ``captions.csv``), parsed line by line (a quoted caption may span lines) so one bad row (bad encoding, empty caption, missing file,
  extra fields, a quote never closed) is skipped and reported with its line number instead of failing the whole file;
  a quote left open ends at the next line that begins with an existing image file and a comma (that line is a
  row of its own, not more caption);
* packaged sources in ``tux_paint.py`` and ``emoji.py``;
* WebDataset shards (``wds:``, as img2dataset writes them) in ``wds.py``.

Several rows with the same filename give that image several captions; retrieval counts a hit when any
of them is retrieved.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from clipforge.errors import ClipforgeError
from clipforge.data.dataset import CaptionDataset, SkipReport

REQUIRED_COLUMNS = ("filename", "caption")


def folds(n: int, k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """``k`` disjoint held-out index sets covering ``range(n)``, from a fixed seed (docs/benchmarks.md)."""
    order = np.random.RandomState(seed).permutation(n)
    return [np.sort(order[i::k]) for i in range(k)]


def decode_lines(raw: bytes, report: SkipReport, where: str) -> list[tuple[int, str]]:
    """UTF-8 lines with their 1-based numbers; a line that is not UTF-8 is reported, not fatal."""
    out = []
    for no, line in enumerate(raw.splitlines(), start=1):
        try:
            out.append((no, line.decode("utf-8-sig" if no == 1 else "utf-8")))
        except UnicodeDecodeError as e:
            report.add(f"{where}:{no}", f"line is not valid UTF-8 ({e.reason} at byte {e.start}); re-save the file as UTF-8")
    return out


def load_caption_csv(csv_path: str | Path, images_dir: str | Path | None = None, check_files: bool = True) -> CaptionDataset:
    """Read ``filename,caption`` rows (other columns ignored). Bad rows are skipped with their line number.

    ``images_dir`` defaults to ``images/`` next to the CSV when it exists, else the CSV's folder.
    A missing required column is the one error that stops the load: nothing could be read without it.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ClipforgeError(f"caption CSV '{csv_path}' does not exist")
    if images_dir is None:
        images_dir = csv_path.parent / "images" if (csv_path.parent / "images").is_dir() else csv_path.parent
    images_dir = Path(images_dir)
    report = SkipReport()
    lines = decode_lines(csv_path.read_bytes(), report, csv_path.name)
    if not lines:
        raise ClipforgeError(f"caption CSV '{csv_path}' is empty; it needs a header line 'filename,caption'")
    header_no, header_text = lines[0]
    header = [h.strip().lower() for h in next(csv.reader([header_text]))]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ClipforgeError(f"caption CSV '{csv_path}' has no column {' or '.join(repr(m) for m in missing)} "
                             f"(header: {header}); the first line must name the columns, e.g. 'filename,caption'")
    fi, ci = header.index("filename"), header.index("caption")
    by_file: dict[str, list[str]] = {}
    for no, row in csv_rows(lines[1:], report, csv_path.name, row_starts(fi, (images_dir,))):
        if len(row) != len(header):
            report.add(f"{csv_path.name}:{no}", f"has {len(row)} fields, the header has {len(header)}; quote captions that contain commas")
            continue
        name, caption = row[fi].strip(), " ".join(row[ci].split())
        if not name:
            report.add(f"{csv_path.name}:{no}", "empty filename")
            continue
        if not caption:
            report.add(f"{csv_path.name}:{no}", f"empty caption for '{name}'")
            continue
        by_file.setdefault(name, []).append(caption)
    paths, captions = [], []
    for name, caps in by_file.items():
        path = (images_dir / name).resolve()
        if check_files and not path.is_file():
            report.add(f"{csv_path.name}:{name}", f"image file not found: {path}")
            continue
        paths.append(path)
        captions.append(caps)
    return CaptionDataset(csv_path.stem, paths, captions, skipped=report)


MAX_ROW_LINES = 50  # a quoted caption may span lines, up to this many


def _open_quote(text: str) -> bool:
    """Does ``text`` end inside a quoted field (a caption that goes on on the next line)?"""
    try:
        for _ in csv.reader(io.StringIO(text), strict=True):
            pass
    except csv.Error as e:
        return "unexpected end of data" in str(e)
    return False


def row_starts(file_column: int, roots: tuple[Path, ...]):
    """-> ``starts(line)``: does this physical line begin a new row, i.e. does its file column name a file that
    exists (absolute, or under one of ``roots``)? Used to end a quote left open on the line before it."""
    def starts(text: str) -> bool:
        try:
            fields = next(csv.reader([text]), [])
        except csv.Error:
            return False
        if file_column >= len(fields) or len(fields) < 2 or not fields[file_column].strip():
            return False
        name = Path(fields[file_column].strip())
        try:
            return any(p.is_file() for p in ([name] if name.is_absolute() else [r / name for r in roots]))
        except (OSError, ValueError):                                   # a name too long, a NUL byte
            return False
    return starts


def csv_rows(lines: list[tuple[int, str]], report: SkipReport, where: str, starts=None):
    """csv rows with the line number they start on; a row the csv module cannot parse is reported.

    A quoted field may span lines (as csv.writer writes a caption with a newline). A quote still open at a line's
    end is a missing '"' instead when the next line begins a row of its own (``starts``: its file column names an
    existing file), or when it is still open after MAX_ROW_LINES lines: the row is reported on its first line and
    skipped, and reading goes on with the next line, so no row after it is swallowed into its caption.
    """
    starts = starts or (lambda text: False)
    i = 0
    while i < len(lines):
        no, text = lines[i]
        i += 1
        if not text.strip():
            continue
        if _open_quote(text):
            j, joined = i, text
            while j < len(lines) and j - i < MAX_ROW_LINES and _open_quote(joined) and not starts(lines[j][1]):
                joined += "\n" + lines[j][1]
                j += 1
            if _open_quote(joined):
                nxt = f" before the next row (line {lines[j][0]})" if j < len(lines) and starts(lines[j][1]) else ""
                report.add(f"{where}:{no}", f"a quoted field is never closed{nxt} (missing '\"'?); the row is skipped")
                continue
            text, i = joined, j
        try:
            rows = list(csv.reader(io.StringIO(text)))
        except csv.Error as e:
            report.add(f"{where}:{no}", f"cannot parse CSV row: {e}")
            continue
        if rows:
            yield no, rows[0]


def load_caption_source(spec: str, caption_field: str = "txt") -> CaptionDataset:
    """``tux-paint``, ``emoji``, ``csv:<file>``, ``captions:<dir with captions.csv>``, a .csv path or
    ``wds:<shard | folder | brace pattern>`` (WebDataset shards; ``caption_field``: data/wds.py)."""
    scheme, _, rest = spec.partition(":")
    if scheme == "wds":
        from clipforge.data.wds import load_wds
        return load_wds(spec, caption_field)
    if spec == "tux-paint" or scheme == "tux-paint":
        from clipforge.data.tux_paint import load_tux_paint
        return load_tux_paint(rest or None)
    if spec == "emoji" or scheme == "emoji":
        from clipforge.data.emoji import load_emoji
        return load_emoji(rest or None)
    if scheme == "csv":
        return load_caption_csv(rest)
    if scheme == "captions":
        return load_caption_csv(Path(rest) / "captions.csv")
    if spec.endswith(".csv"):
        return load_caption_csv(spec)
    raise ClipforgeError(f"unknown caption source '{spec}': use tux-paint, emoji, csv:<file.csv> or "
                         "captions:<dir with captions.csv and images/>")


__all__ = ["CaptionDataset", "load_caption_csv", "load_caption_source", "folds"]
