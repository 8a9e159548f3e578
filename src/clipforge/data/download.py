"""Download an image collection from a CSV of URLs (+ captions) into a folder ``clipforge index build`` reads.

``download(urls_csv, out)`` fetches in parallel (a thread pool: the work is waiting on sockets), with a
timeout per request and a deadline per file, retries with exponential backoff on network errors, 5xx, 408 and
429, and keeps only files that decode as still images of a useful size, re-saved as RGB. It writes::

    out/images/<sha1 of url>.jpg     one file per good URL (named by URL, so reruns find it)
    out/captions.csv                 filename,caption,url,width,height   (filename relative to out/)
    out/failures.csv                 url,caption,reason,attempts         (every URL that gave no image)

It is resumable: a URL whose image is already in ``out/images`` is not fetched again, and files appear only
when complete (written to a temporary name, then renamed). Only http(s) URLs are fetched.
"""
from __future__ import annotations

import csv
import hashlib
import http.client
import io
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from clipforge.data.images import load_image
from clipforge.errors import ClipforgeError

URL_COLUMNS = ("url", "image_url", "URL", "link")
CAPTION_COLUMNS = ("caption", "text", "title", "description")
USER_AGENT = "clipforge-download/0.1 (+https://pypi.org/project/clipforge/)"


@dataclass
class DownloadSettings:
    workers: int = 16
    timeout: float = 10.0          # seconds per connect / read
    deadline: float = 60.0         # seconds for one whole file, retries excluded
    retries: int = 3               # extra attempts after the first
    backoff: float = 0.5           # first wait; doubled each retry, with jitter
    min_side: int = 32             # smaller images are dropped
    max_bytes: int = 25 * 1024 * 1024
    max_side: int = 0              # > 0: shrink larger images to this longest side
    image_format: str = "jpg"      # 'jpg' (quality 95) or 'png'


@dataclass
class Result:
    row: int
    url: str
    caption: str | None
    filename: str | None = None
    width: int | None = None
    height: int | None = None
    reason: str | None = None
    attempts: int = 0
    resumed: bool = False


@dataclass
class DownloadReport:
    out: Path
    ok: int = 0
    resumed: int = 0
    failed: int = 0
    seconds: float = 0.0
    reasons: dict = field(default_factory=dict)

    def summary(self) -> str:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        return (f"{self.ok} images in {self.out / 'captions.csv'} ({self.resumed} already there), "
                f"{self.failed} failed{' (' + why + ')' if why else ''}; {self.seconds:.1f} s")


class _Retryable(Exception):
    pass


class _Permanent(Exception):
    pass


def read_url_list(path: str | Path) -> list[tuple[str, str | None]]:
    """(url, caption) rows from a CSV with a 'url' column (+ optional 'caption'), or a text file of URLs."""
    p = Path(path)
    if not p.is_file():
        raise ClipforgeError(f"URL list '{p}' does not exist")
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


def _name(url: str, ext: str) -> str:
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:20] + "." + ext


def _fetch(url: str, s: DownloadSettings) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=s.timeout) as r:
            length = r.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > s.max_bytes:
                raise _Permanent(f"too large ({int(length)} bytes)")
            buf = io.BytesIO()
            while True:
                block = r.read(64 * 1024)
                if not block:
                    break
                buf.write(block)
                if buf.tell() > s.max_bytes:
                    raise _Permanent(f"too large (over {s.max_bytes} bytes)")
                if time.monotonic() - start > s.deadline:
                    raise _Retryable("timed out (deadline)")
            if length and length.isdigit() and buf.tell() < int(length):
                raise _Retryable(f"truncated transfer ({buf.tell()} of {length} bytes)")
            return buf.getvalue()
    except urllib.error.HTTPError as e:
        if e.code in (408, 429) or e.code >= 500:
            raise _Retryable(f"HTTP {e.code}") from None
        raise _Permanent(f"HTTP {e.code}") from None
    except (socket.timeout, TimeoutError):
        raise _Retryable("timed out") from None
    except http.client.IncompleteRead:
        raise _Retryable("truncated transfer") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise _Retryable("timed out") from None
        raise _Retryable(f"network error: {reason}"[:120]) from None
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        raise _Retryable(f"network error: {e.__class__.__name__}") from None


def _clean(data: bytes, s: DownloadSettings) -> Image.Image:
    """Bytes -> RGB still image, or _Permanent with the reason it is dropped."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
    except Exception:  # noqa: BLE001 - load_image below gives the precise reason
        fmt = None
    if fmt == "GIF":
        raise _Permanent("GIF (dropped: often animated, low quality)")
    img, reason = load_image(io.BytesIO(data), min_side=s.min_side)
    if img is None:
        raise _Permanent(reason if not reason.startswith("too small") else f"{reason}, under {s.min_side} px")
    if s.max_side and max(img.size) > s.max_side:
        img.thumbnail((s.max_side, s.max_side), Image.Resampling.LANCZOS)
    return img


def _save(img: Image.Image, path: Path, fmt: str) -> None:
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.part")
    try:
        if fmt == "png":
            img.save(tmp, "PNG")
        else:
            img.save(tmp, "JPEG", quality=95)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _one(res: Result, images: Path, s: DownloadSettings) -> Result:
    path = images / res.filename.split("/", 1)[1]
    if path.is_file():  # done in an earlier run
        try:
            with Image.open(path) as im:
                res.width, res.height = im.size
            res.resumed = True
            return res
        except Exception:  # noqa: BLE001 - unreadable leftover: fetch again
            path.unlink(missing_ok=True)
    if not res.url.lower().startswith(("http://", "https://")):
        res.reason, res.filename = "not an http(s) URL", None
        return res
    for attempt in range(s.retries + 1):
        res.attempts = attempt + 1
        try:
            img = _clean(_fetch(res.url, s), s)
            _save(img, path, s.image_format)
            res.width, res.height, res.reason = img.size[0], img.size[1], None
            return res
        except _Permanent as e:
            res.reason = str(e)
            break
        except _Retryable as e:
            res.reason = str(e)
            if attempt < s.retries:
                time.sleep(s.backoff * (2 ** attempt) * (0.5 + random.random()))
    res.filename = None
    return res


def download(urls: str | Path, out: str | Path, settings: DownloadSettings | None = None,
             progress: bool = True) -> DownloadReport:
    """Fetch every URL of ``urls`` into ``out`` (see the module doc); returns counts and failure reasons."""
    s = settings or DownloadSettings()
    if s.image_format not in ("jpg", "png"):
        raise ClipforgeError(f"image format must be 'jpg' or 'png', not '{s.image_format}'")
    t0 = time.time()
    rows = read_url_list(urls)
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    todo, done, first = [], [], {}
    for i, (url, caption) in enumerate(rows):
        if _not_utf8(url) or _not_utf8(caption):
            done.append(Result(i, _readable(url), _readable(caption), reason="row is not valid UTF-8 (re-save the list as UTF-8)"))
        elif not url:
            done.append(Result(i, url, caption, reason="empty URL"))
        elif url in first:
            done.append(Result(i, url, caption, reason=f"duplicate of row {first[url] + 1}"))
        else:
            first[url] = i
            todo.append(Result(i, url, caption, filename=f"images/{_name(url, s.image_format)}"))
    bar = tqdm(total=len(todo), desc="download", unit="url", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, s.workers)) as pool:
        for r in pool.map(lambda r: _one(r, images, s), todo):
            done.append(r)
            bar.update(1)
    bar.close()
    done.sort(key=lambda r: r.row)
    report = DownloadReport(out)
    _write_csv(out / "captions.csv", ["filename", "caption", "url", "width", "height"],
               [[r.filename, r.caption or "", r.url, r.width, r.height] for r in done if r.filename])
    _write_csv(out / "failures.csv", ["url", "caption", "reason", "attempts"],
               [[r.url, r.caption or "", r.reason, r.attempts] for r in done if not r.filename])
    for r in done:
        if r.filename:
            report.ok += 1
            report.resumed += r.resumed
        else:
            report.failed += 1
            key = r.reason.split(" (")[0].split(":")[0]
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
