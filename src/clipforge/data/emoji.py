"""The emoji set: 64-px Google emoji images (npm ``emoji-datasource-google@16.0.0``, Apache-2.0) captioned by
their Unicode names, with Chinese names from npm ``emojibase-data@17.0.0`` (MIT).

The tarballs are read in place (no full extraction): the images needed are unpacked once into
``$CLIPFORGE_DATA/emoji-google-64/``. Captions are the lower-cased Unicode name ("grinning face"); the zh
translation is emojibase's label, matched on the code points with variation selectors (FE0F) ignored.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from clipforge.data.dataset import CaptionDataset, SkipReport
from clipforge.data.npm import NpmPackage, data_dir, fetch

IMAGES = NpmPackage("emoji-datasource-google", "16.0.0",
                    "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==")
ZH_NAMES = NpmPackage("emojibase-data", "17.0.0",
                      "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA==")


def _key(hexcode: str) -> str:
    return "-".join(h for h in hexcode.upper().split("-") if h != "FE0F")


def _unpack(images_tgz: Path, out: Path) -> list[dict]:
    """emoji.json + the 64-px images, unpacked once (a marker file says the unpack finished)."""
    done = out / ".complete"
    if not done.is_file():
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(images_tgz, "r:gz") as tar:
            for member in tar:
                if member.isfile() and (member.name == "package/emoji.json" or member.name.startswith("package/img/google/64/")):
                    target = out / Path(member.name).name
                    with tar.extractfile(member) as src:
                        target.write_bytes(src.read())
        done.write_text("ok")
    return json.loads((out / "emoji.json").read_text(encoding="utf-8"))


def _zh_labels(zh_tgz: Path | None) -> dict[str, str]:
    if zh_tgz is None:
        return {}
    with tarfile.open(zh_tgz, "r:gz") as tar:
        data = json.load(tar.extractfile("package/zh/data.json"))
    return {_key(e["hexcode"]): e["label"] for e in data if e.get("label")}


def load_emoji(root: str | Path | None = None, images_tgz: Path | None = None, zh_tgz: Path | None = None) -> CaptionDataset:
    """All emoji with a Google image; ``root`` is where the images are unpacked (default: the data dir)."""
    root = Path(root) if root else data_dir() / "emoji-google-64"
    images_tgz = images_tgz or fetch(IMAGES, what="emoji images")
    if zh_tgz is None:
        zh_tgz = fetch(ZH_NAMES, what="emoji zh names")
    entries = _unpack(images_tgz, root)
    zh = _zh_labels(zh_tgz)
    report = SkipReport()
    paths, captions, zh_caps = [], [], []
    for e in sorted(entries, key=lambda e: e.get("sort_order", 0)):
        path = root / e.get("image", "")
        name = (e.get("name") or (e.get("short_names") or [""])[0].replace("_", " ")).strip().lower()
        if not e.get("has_img_google", True) or not path.is_file():
            report.add(e.get("image", "?"), "no 64-px Google image in the package")
            continue
        if not name:
            report.add(e.get("image", "?"), "no name")
            continue
        paths.append(path)
        captions.append([name])
        label = zh.get(_key(e.get("unified", "")))
        zh_caps.append([label] if label else [])
    return CaptionDataset("emoji", paths, captions, {"zh": zh_caps}, report)


def emoji_groups(root: str | Path | None = None, images_tgz: Path | None = None) -> dict[str, tuple[str, str]]:
    """Image file name -> (Unicode category, subcategory) as emoji.json gives them ("Smileys & Emotion",
    "face-smiling"): class labels for the images of ``load_emoji`` (the transfer benchmark classifies them)."""
    root = Path(root) if root else data_dir() / "emoji-google-64"
    entries = _unpack(images_tgz or fetch(IMAGES, what="emoji images"), root)
    return {e["image"]: (e.get("category") or "", e.get("subcategory") or "") for e in entries if e.get("image")}
