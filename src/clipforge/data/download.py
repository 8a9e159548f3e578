"""Download an image collection from a list of URLs (+ captions) into WebDataset shards, with img2dataset.

``download(urls, out)`` hands the fetching to img2dataset (threads per process, timeout, retries, resizing,
re-encoding, one ``00000.tar`` + ``00000.parquet`` + ``00000_stats.json`` per shard of ``shard_size`` URLs), the
maintained tool for this, and reads its results back::

    out/00000.tar ...                the images with their captions: read them as ``wds:out`` (data/wds.py)
    out/00000.parquet ...            img2dataset's row per URL (status, error_message, size, sha256)
    out/failures.csv                 url,caption,reason   (every URL that gave no image, in the list's order)

It is resumable the way img2dataset is: a shard whose ``_stats.json`` exists is not fetched again, so a rerun
after an interruption fetches only the shards that did not finish.

What clipforge still does itself, because img2dataset does not:

* it reads the list (CSV / TSV / text / parquet, columns named ``url`` + ``caption`` or the usual aliases) and
  drops rows img2dataset should never see: empty URLs, repeats of an earlier URL, rows that are not UTF-8, and any
  URL that is not http(s) (img2dataset opens URLs with urllib, which would read ``file:///etc/passwd``);
  those rows go to ``failures.csv`` with their reason;
* it refuses to resume into a folder whose shards came from a different list (img2dataset numbers shards by
  position, so a changed list would mix two collections);
* it reads every new shard once with clipforge's own decoder (``wds:``), so an image img2dataset kept but clipforge
  cannot read (a cut JPEG that OpenCV decodes and PIL refuses) is a failure here, not a surprise in training;
* it turns img2dataset's per-shard parquet files into one failures report and a summary.

What the old built-in downloader did that is gone: retrying only transient errors with exponential backoff
(img2dataset retries every failure at once, a 404 included), a size cap and a wall-clock deadline per file, resuming
per file rather than per shard (a finished shard's failures are not retried: delete its ``_stats.json`` to redo
it), and dropping GIFs (OpenCV reads their first frame, so they are kept, re-encoded).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from clipforge.data.images import MAX_PIXELS
from clipforge.errors import ClipforgeError
from clipforge.util.extras import require

URL_COLUMNS = ("url", "image_url", "URL", "link")
CAPTION_COLUMNS = ("caption", "text", "title", "description")
FORMATS = ("jpg", "png", "webp")
QUALITY = {"jpg": 95, "png": 1, "webp": 95}   # img2dataset's encode_quality: JPEG/WebP quality, PNG zlib level
INPUT = ".clipforge-urls.parquet"      # the cleaned list img2dataset reads (hidden: wds: globs only *.tar)
USER_AGENT_TOKEN = "clipforge"
DISALLOWED = ("noai", "noimageai", "noindex", "noimageindex")   # X-Robots-Tag values that refuse an image


@dataclass
class DownloadSettings:
    workers: int = 16              # download threads per process (img2dataset thread_count)
    processes: int = 1             # img2dataset processes (each runs `workers` threads)
    timeout: float = 10.0          # seconds per request
    retries: int = 3               # extra attempts after the first
    min_side: int = 32             # smaller images are dropped
    max_side: int = 0              # > 0: shrink larger images to this longest side (never enlarged)
    image_format: str = "jpg"      # what the shards hold: 'jpg' (quality 95), 'png' or 'webp'
    shard_size: int = 10_000       # URLs per shard


@dataclass
class DownloadReport:
    out: Path
    ok: int = 0
    resumed: int = 0               # of ``ok``: in shards finished by an earlier run
    failed: int = 0
    shards: int = 0
    seconds: float = 0.0
    reasons: dict = field(default_factory=dict)

    def summary(self) -> str:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        return (f"{self.ok} images in {self.shards} shards under {self.out} (read them as 'wds:{self.out}'; "
                f"{self.resumed} already there), {self.failed} failed{' (' + why + ')' if why else ''}; "
                f"{self.seconds:.1f} s")


def _parquet_rows(p: Path) -> list[tuple[str, str | None]]:
    pq = require("pyarrow.parquet", "scale", "a parquet URL list")
    table = pq.read_table(p)
    fields = table.column_names
    ucol = next((c for c in fields if c.strip() in URL_COLUMNS), None)
    ccol = next((c for c in fields if c.strip().lower() in CAPTION_COLUMNS), None)
    if ucol is None:
        raise ClipforgeError(f"'{p}' needs a 'url' column (and optionally 'caption'); its columns are {fields}")
    urls = table.column(ucol).to_pylist()
    caps = table.column(ccol).to_pylist() if ccol else [None] * len(urls)
    return [((str(u) if u is not None else "").strip(), (str(c).strip() or None) if c is not None else None)
            for u, c in zip(urls, caps)]


def read_url_list(path: str | Path) -> list[tuple[str, str | None]]:
    """(url, caption) rows from a CSV/TSV/parquet with a 'url' column (+ optional 'caption'), or a text file of URLs."""
    p = Path(path)
    if not p.is_file():
        raise ClipforgeError(f"URL list '{p}' does not exist")
    if p.suffix.lower() == ".parquet":
        return _parquet_rows(p)
    # Bytes that are not UTF-8 become lone surrogates (surrogateescape) instead of stopping the whole list; such a
    # URL cannot be fetched as written, so it fails alone, reported as not valid UTF-8.
    if p.suffix.lower() not in (".csv", ".tsv"):
        return [(ln.strip(), None) for ln in p.read_text(encoding="utf-8-sig", errors="surrogateescape").splitlines()
                if ln.strip() and not ln.startswith("#")]
    with p.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        fields = reader.fieldnames or []
        ucol = next((c for c in fields if c.strip() in URL_COLUMNS), None)
        ccol = next((c for c in fields if c.strip().lower() in CAPTION_COLUMNS), None)
        if ucol is None:
            raise ClipforgeError(f"'{p}' needs a 'url' column (and optionally 'caption'); its header is {fields}")
        return [((r.get(ucol) or "").strip(), ((r.get(ccol) or "").strip() or None) if ccol else None) for r in reader]


def _not_utf8(text: str | None) -> bool:
    return bool(text) and any("\udc80" <= ch <= "\udcff" for ch in text)


def _readable(text: str | None) -> str | None:
    """Lone surrogates (bytes that were not UTF-8) -> U+FFFD, so the reports can be written as UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if text else text


def screen(rows: list[tuple[str, str | None]]) -> tuple[list[tuple[int, str, str | None]], list[tuple[int, str, str | None, str]]]:
    """-> (rows to fetch as (row, url, caption), rows refused as (row, url, caption, reason)): see the module doc."""
    todo, refused, first = [], [], {}
    for i, (url, caption) in enumerate(rows):
        if _not_utf8(url) or _not_utf8(caption):
            refused.append((i, _readable(url), _readable(caption), "row is not valid UTF-8 (re-save the list as UTF-8)"))
        elif not url:
            refused.append((i, url, caption, "empty URL"))
        elif not url.lower().startswith(("http://", "https://")):
            refused.append((i, url, caption, "not an http(s) URL"))
        elif url in first:
            refused.append((i, url, caption, f"duplicate of row {first[url] + 1}"))
        else:
            first[url] = i
            todo.append((i, url, caption))
    return todo, refused


def _write_input(out: Path, todo: list[tuple[int, str, str | None]]) -> Path:
    """The cleaned list as parquet; refuses a folder whose earlier shards came from another list."""
    pa = require("pyarrow", "scale", "clipforge download")
    pq = require("pyarrow.parquet", "scale", "clipforge download")
    digest = hashlib.sha256(json.dumps(todo, ensure_ascii=False).encode()).hexdigest()[:16]
    stamp = out / ".clipforge-urls.sha256"
    if stamp.is_file() and stamp.read_text().strip() != digest and any(out.glob("*_stats.json")):
        raise ClipforgeError(f"'{out}' holds shards of a different URL list (img2dataset numbers shards by position, "
                             "so resuming would mix them): use a new --out folder, or delete this one")
    path = out / INPUT
    table = pa.table({"url": [u for _, u, _ in todo], "caption": [c for _, _, c in todo],
                      "row": [i for i, _, _ in todo]})
    pq.write_table(table, path)
    stamp.write_text(digest + "\n")
    return path


def _check_shards(out: Path) -> dict[str, str]:
    """key -> why, for every image img2dataset kept that clipforge's decoder refuses (OpenCV decodes some cut JPEGs
    that PIL does not, and with skip_reencode the bytes stay as fetched). Each shard is read once, when new: the
    result is kept in ``.clipforge-check/<shard>.json`` (not beside the shards: img2dataset takes every top-level
    ``*.json`` for a finished shard's stats)."""
    from clipforge.data.dataset import SkipReport
    from clipforge.data.wds import iter_samples
    check = out / ".clipforge-check"
    check.mkdir(exist_ok=True)
    bad: dict[str, str] = {}
    for tar in sorted(out.glob("[0-9]*.tar")):
        memo = check / f"{tar.stem}.json"
        if not memo.is_file() or memo.stat().st_mtime_ns < tar.stat().st_mtime_ns:
            report = SkipReport()
            for _ in iter_samples([str(tar)], report, require_caption=False):
                pass
            memo.write_text(json.dumps(report.items, ensure_ascii=False), encoding="utf-8")
        for item, why in json.loads(memo.read_text(encoding="utf-8")):
            bad[item.partition(":")[2] or item] = why
    return bad


def _results(out: Path) -> list[dict]:
    """img2dataset's rows (one per URL it was given) from the shards' parquet files."""
    pq = require("pyarrow.parquet", "scale", "clipforge download")
    rows = []
    for p in sorted(out.glob("[0-9]*.parquet")):
        try:
            rows += pq.read_table(p, columns=["row", "key", "url", "caption", "status", "error_message"]).to_pylist()
        except Exception as e:  # noqa: BLE001 - a damaged shard table: its URLs are reported as unknown, not fatal
            rows.append({"row": None, "key": None, "url": str(p), "caption": None, "status": "unreadable",
                         "error_message": f"shard table unreadable ({e.__class__.__name__})"})
    return rows


def _resize(s: DownloadSettings) -> dict:
    return dict(resize_mode="keep_ratio_largest", image_size=s.max_side, resize_only_if_bigger=True) if s.max_side \
        else dict(resize_mode="no", image_size=256, resize_only_if_bigger=False)


def _in_process(input_path: Path, out: Path, s: DownloadSettings) -> None:
    """img2dataset's own reader, resizer, downloader and WebDataset writer, run in this process (threads only).

    Why not ``img2dataset.download`` here: it always starts a logger process and a pool of worker processes with
    the 'spawn' method, and each one re-imports img2dataset (torch, albumentations, wandb: several seconds of CPU)
    before fetching anything; for one process that is pure overhead. The output is the same files."""
    from img2dataset.downloader import Downloader  # imported (with its warnings silenced) by _img2dataset
    from img2dataset.reader import Reader
    from img2dataset.resizer import Resizer
    from img2dataset.writer import WebDatasetSampleWriter
    tmp = out / "_tmp"
    tmp.mkdir(exist_ok=True)
    done = {int(p.name.split("_")[0]) for p in out.glob("*_stats.json")}
    reader = Reader(str(input_path), "parquet", "url", "caption", None, None, ["row"], s.shard_size, done, str(tmp))
    resizer = Resizer(**_resize(s), upscale_interpolation="lanczos", downscale_interpolation="area",
                      encode_quality=QUALITY[s.image_format], encode_format=s.image_format, skip_reencode=True,
                      disable_all_reencoding=False, min_image_size=s.min_side, max_image_area=MAX_PIXELS,
                      max_aspect_ratio=float("inf"), blurrer=None)
    downloader = Downloader(sample_writer_class=WebDatasetSampleWriter, resizer=resizer, thread_count=s.workers,
                            save_caption=True, extract_exif=False, output_folder=str(out),
                            column_list=reader.column_list, timeout=s.timeout, number_sample_per_shard=s.shard_size,
                            oom_shard_count=5, compute_hash="sha256", verify_hash_type=None,
                            encode_format=s.image_format, retries=s.retries, user_agent_token=USER_AGENT_TOKEN,
                            disallowed_header_directives=list(DISALLOWED))
    failed = [row for ok, row in map(downloader, reader) if not ok]
    failed = [row for ok, row in map(downloader, failed) if not ok]      # img2dataset's max_shard_retry=1
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)


def _img2dataset(input_path: Path, out: Path, s: DownloadSettings, progress: bool) -> None:
    # img2dataset imports albumentations, which asks PyPI for a newer version at import unless told not to, and
    # wandb, which must stay off: nothing here talks to anything but the image servers.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("WANDB_SILENT", "true")
    with warnings.catch_warnings():          # img2dataset imports the deprecated imghdr module
        warnings.simplefilter("ignore", DeprecationWarning)
        img2dataset = require("img2dataset", "scale", "clipforge download")
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO())
    with quiet, (contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())):
        if s.processes == 1:
            return _in_process(input_path, out, s)
        img2dataset.download(
            url_list=str(input_path), input_format="parquet", url_col="url", caption_col="caption",
            save_additional_columns=["row"], output_folder=str(out), output_format="webdataset",
            processes_count=s.processes, thread_count=s.workers, distributor="multiprocessing",
            timeout=s.timeout, retries=s.retries, min_image_size=s.min_side, max_image_area=MAX_PIXELS, encode_format=s.image_format,
            encode_quality=QUALITY[s.image_format], skip_reencode=True, number_sample_per_shard=s.shard_size,
            incremental_mode="incremental", enable_wandb=False, extract_exif=False, compute_hash="sha256",
            user_agent_token=USER_AGENT_TOKEN, disallowed_header_directives=list(DISALLOWED), **_resize(s))


def download(urls: str | Path, out: str | Path, settings: DownloadSettings | None = None,
             progress: bool = True) -> DownloadReport:
    """Fetch every URL of ``urls`` into shards under ``out`` (see the module doc); returns counts and reasons."""
    s = settings or DownloadSettings()
    if s.image_format not in FORMATS:
        raise ClipforgeError(f"image format must be one of {', '.join(FORMATS)}, not '{s.image_format}'")
    if s.shard_size < 1 or s.workers < 1 or s.processes < 1:
        raise ClipforgeError("shard size, workers and processes must be at least 1")
    t0 = time.time()
    todo, refused = screen(read_url_list(urls))
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    done_before = {p.name.split("_")[0] for p in out.glob("*_stats.json")}
    if todo:
        _img2dataset(_write_input(out, todo), out, s, progress)
    report = DownloadReport(out)
    failures = [(i, u, c, why) for i, u, c, why in refused]
    unreadable = _check_shards(out)
    for r in _results(out):
        if r["status"] == "success" and r["key"] in unreadable:
            r["error_message"] = f"kept by img2dataset but {unreadable[r['key']]}"
        elif r["status"] == "success":
            report.ok += 1
            continue
        failures.append((r["row"] if r["row"] is not None else 1 << 62, r["url"], r["caption"],
                         r["error_message"] or r["status"] or "unknown"))
    for shard in sorted(k for k in unreadable if k.endswith(".tar")):     # a whole shard that cannot be read
        failures.append((1 << 62, str(out / shard), None, unreadable[shard]))
    report.resumed = sum(json.loads((out / f"{shard}_stats.json").read_text()).get("successes", 0)
                         for shard in done_before if (out / f"{shard}_stats.json").is_file())
    report.shards = len(list(out.glob("[0-9]*.tar")))
    failures.sort(key=lambda f: f[0])
    _write_csv(out / "failures.csv", ["url", "caption", "reason"], [[u, c or "", why] for _, u, c, why in failures])
    report.failed = len(failures)
    for *_, why in failures:
        key = str(why).split(" (")[0].split(":")[0]
        report.reasons[key] = report.reasons.get(key, 0) + 1
    report.seconds = time.time() - t0
    return report


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    tmp = path.with_name(f".{path.name}.part")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


__all__ = ["DownloadSettings", "DownloadReport", "download", "read_url_list", "screen"]
