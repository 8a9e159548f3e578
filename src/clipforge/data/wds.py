"""WebDataset shards as a caption source: ``wds:<tar | folder of tars | brace pattern>``.

The layout is what img2dataset (and ``clipforge download``) writes: ``00000.tar`` holding ``{key}.jpg|png|webp``,
``{key}.txt`` (the caption) and ``{key}.json`` (url, size, ...), with ``00000.parquet`` beside it. Shards are read
with the maintained ``webdataset`` library (its tar iterator and key grouping), one shard after the other, so a
run holds one sample at a time however large the collection is; each image is decoded once, by clipforge's own
decoder (RGB, alpha composited on white: ``data/images.py``), so shards and image folders give the same pixels.

Why per shard: a collection of thousands of shards always has a few bad ones. A sample without an image or a
caption, with an empty caption or an image that does not decode is skipped and reported as ``00003.tar:<key>``;
a shard that is missing, truncated or not a tar is reported as ``00003.tar`` and reading goes on with the next
one. ``skips_per_shard`` counts the report by shard.

The shard files are opened here (never through webdataset's URL opener), so a spec cannot name a ``pipe:``
command or a URL: shards are local files.

Training and evaluation keep images in memory as files (``CaptionDataset`` holds paths, and the embedding cache
keys them by path, size and mtime), so ``load_wds`` writes each good sample's image bytes once into a folder of
the user cache keyed by the shards' paths, sizes and mtimes, and reuses it on the next run. Streaming consumers
(the feature store) use ``iter_samples`` and write nothing.
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from clipforge.data.dataset import CaptionDataset, SkipReport
from clipforge.data.images import load_image
from clipforge.errors import ClipforgeError
from clipforge.util.extras import require
from clipforge.util.paths import cache_dir

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
PREFIX = "wds:"


@dataclass
class WdsSample:
    """One usable sample: its key in the shard, the decoded RGB image, its caption and the shard's path."""
    key: str
    image: Image.Image
    caption: str
    shard: str


def _strip(spec: str) -> str:
    return spec[len(PREFIX):] if spec.startswith(PREFIX) else spec


def list_shards(spec: str) -> list[str]:
    """``wds:`` spec -> sorted shard paths: a ``.tar`` file, a folder (its ``*.tar``), a brace pattern
    (``data/{00000..00099}.tar``) or a glob. Names a pattern yields that do not exist stay in the list (reading
    reports each as missing) as long as one exists; a spec that matches no file at all is a ClipforgeError."""
    pattern = _strip(spec).strip()
    if not pattern:
        raise ClipforgeError("empty wds: source: give a shard, a folder of shards or a pattern such as "
                             "'wds:shards/{00000..00009}.tar'")
    if re.match(r"^[a-z][a-z0-9+.-]*:", pattern) and not Path(pattern).exists():
        raise ClipforgeError(f"wds source '{pattern}': shards must be local files (no URLs or pipe: commands); "
                             "fetch them first")
    p = Path(pattern).expanduser()
    if p.is_dir():
        shards = sorted(str(s) for s in p.glob("*.tar") if s.is_file())
        if not shards:
            raise ClipforgeError(f"wds source '{pattern}' is a folder with no .tar shards in it")
        return shards
    if p.is_file():
        return [str(p)]
    braceexpand = require("braceexpand", "scale", "a wds: brace pattern").braceexpand
    names = sorted(set(n for part in braceexpand(str(p)) for n in
                       (sorted(glob.glob(part)) if glob.has_magic(part) else [part])))
    if not any(Path(n).is_file() for n in names):
        raise ClipforgeError(f"wds source '{pattern}' matches no shard file; give a .tar, a folder of .tar files "
                             "or a brace pattern like 'shards/{00000..00009}.tar'")
    return names


def _lookup(obj, field: str):
    for part in field.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def caption_of(sample: dict, caption_field: str = "txt") -> tuple[str | None, str | None]:
    """(caption, None) or (None, why not). ``caption_field`` names a member of the sample (``txt``: the
    ``{key}.txt`` file) or, when the sample has no such member, a field of its ``{key}.json`` (``caption``,
    or a dotted path such as ``meta.caption``)."""
    raw = sample.get(caption_field)
    if raw is None and "json" in sample and caption_field != "json":
        try:
            raw = _lookup(json.loads(sample["json"]), caption_field)
        except (ValueError, UnicodeDecodeError) as e:
            return None, f"its .json does not parse ({e.__class__.__name__}), so it has no '{caption_field}' caption"
        if raw is not None and not isinstance(raw, (str, bytes)):
            return None, f"json field '{caption_field}' is a {type(raw).__name__}, not text"
    if raw is None:
        return None, f"no caption (no .{caption_field} member and no '{caption_field}' field in a .json)"
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            return None, "caption is not valid UTF-8"
    caption = " ".join(raw.split())
    if not caption:
        return None, "empty caption"
    return caption, None


def _why(exn: BaseException) -> str:
    text = str(exn.args[0]) if exn.args else exn.__class__.__name__
    return f"{exn.__class__.__name__}: {text.split(' @ ')[0]}"[:200]


def _shard_samples(shard: str, report: SkipReport, caption_field: str, require_caption: bool) -> Iterator[WdsSample]:
    name = Path(shard).name
    if not Path(shard).is_file():
        report.add(name, f"shard not found: {shard}")
        return
    problems: list[str] = []

    def handler(exn: BaseException) -> bool:  # webdataset calls this instead of raising: note it, go on
        problems.append(_why(exn))
        return True

    read = 0

    def check(raw: dict, last: bool) -> WdsSample | None:
        item = f"{name}:{raw.get('__key__', '?')}"
        ext = next((e for e in IMAGE_EXTS if e in raw), None)
        caption, why = caption_of(raw, caption_field)
        if caption is None and not require_caption:
            caption = ""
        if (ext is None or caption is None) and last and problems:
            report.add(item, "cut off where the shard is truncated")
        elif ext is None:
            report.add(item, f"no image (.{'/.'.join(IMAGE_EXTS)}) in the sample")
        elif caption is None:
            report.add(item, why)
        else:
            img, why = load_image(io.BytesIO(raw[ext]))
            if img is not None:
                return WdsSample(str(raw.get("__key__")), img, caption, shard)
            report.add(item, f"image does not decode: {why}")
        return None

    tar = require("webdataset.tariterators", "scale", "reading wds: shards")
    try:
        with open(shard, "rb") as stream:
            files = tar.tar_file_expander([{"url": shard, "stream": stream}], handler=handler)
            pending = None         # one sample of look-ahead: the last one of a truncated shard may be cut off
            for raw in tar.group_by_keys(files, handler=handler):
                if pending is not None and (s := check(pending, False)) is not None:
                    yield s
                pending = raw
                read += 1
            if pending is not None and (s := check(pending, True)) is not None:
                yield s
    except OSError as e:
        problems.append(_why(e))
    for why in dict.fromkeys(problems):        # the same error is often raised twice (member, then stream)
        report.add(name, f"truncated or unreadable shard ({why}); {read} samples read before it")


def iter_samples(shards: list[str] | str, report: SkipReport, caption_field: str = "txt",
                 require_caption: bool = True) -> Iterator[WdsSample]:
    """Every usable sample of ``shards`` (a list, or a ``wds:`` spec) in tar order; the rest lands in ``report``.
    ``require_caption=False`` (an image index) keeps images without a caption, with caption ''."""
    for shard in (list_shards(shards) if isinstance(shards, str) else shards):
        yield from _shard_samples(str(shard), report, caption_field, require_caption)


def skips_per_shard(report: SkipReport) -> dict[str, int]:
    """Skipped items counted by shard file name (``00003.tar:<key>`` and ``00003.tar`` both count for it)."""
    return dict(Counter(item.split(":", 1)[0] for item, _ in report.items if ".tar" in item.split(":", 1)[0]))


def _cache_key(shards: list[str], caption_field: str) -> str:
    h = hashlib.sha256(caption_field.encode())
    for s in shards:
        st = os.stat(s) if os.path.isfile(s) else None
        h.update(f"{os.path.abspath(s)}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}".encode())
    return h.hexdigest()[:16]


def _save_image(img: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.part")
    img.save(tmp, "PNG", compress_level=1)
    os.replace(tmp, path)


def load_wds(spec: str, caption_field: str = "txt", root: str | Path | None = None,
             require_caption: bool = True) -> CaptionDataset:
    """The shards of ``spec`` as a CaptionDataset of files (see the module doc): decoded images are written once
    (PNG, already RGB on white) under ``root`` (default: the user cache's ``data/wds``), reused while the shards
    are unchanged. Samples are in shard order, then key order. The skip report is kept beside them, so a reused
    folder reports the same skips."""
    shards = list_shards(spec)
    folder = Path(root or cache_dir("data") / "wds").resolve() / _cache_key(shards, f"{caption_field}|{require_caption}")
    manifest = folder / "manifest.json"
    name = Path(_strip(spec).rstrip("/")).stem.split("{")[0].strip("._-") or "wds"
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text(encoding="utf-8"))
            paths = [folder / p for p, _ in m["samples"]]
            if all(p.is_file() for p in paths):
                report = SkipReport([tuple(x) for x in m["skipped"]])
                return CaptionDataset(name, paths, [[c] if c else [] for _, c in m["samples"]], skipped=report)
        except (ValueError, KeyError, TypeError):
            pass                                   # a damaged manifest: rebuild
    report = SkipReport()
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for s in iter_samples(shards, report, caption_field, require_caption):
        stem = Path(s.shard).stem
        if (s.shard, s.key) in found:
            report.add(f"{Path(s.shard).name}:{s.key}", "key repeated in the shard (first sample kept)")
            continue
        # keys are not trusted as file names ('../x', '/etc/...'): the file is named by a hash of the key
        rel = f"{stem}/{hashlib.sha1(s.key.encode()).hexdigest()[:20]}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        _save_image(s.image, folder / rel)
        found[(s.shard, s.key)] = (rel, s.caption)
    # img2dataset writes a shard's samples in the order their downloads finish; sorted by key, the dataset (and
    # so its fold split) is the same whichever order the tar holds
    samples = [found[k] for k in sorted(found, key=lambda k: (shards.index(k[0]), k[1]))]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_name(".manifest.json.part")
    tmp.write_text(json.dumps({"spec": spec, "caption_field": caption_field, "shards": shards, "samples": samples,
                               "skipped": report.items}, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, manifest)
    return CaptionDataset(name, [folder / p for p, _ in samples], [[c] if c else [] for _, c in samples], skipped=report)


__all__ = ["WdsSample", "list_shards", "iter_samples", "caption_of", "skips_per_shard", "load_wds", "IMAGE_EXTS"]
