"""The in-memory shape every class dataset takes, plus the report of what was skipped."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipforge.errors import ClipforgeError


@dataclass
class SkipReport:
    """Items left out of a run, each with its reason, so a bad file never crashes and never goes unnoticed."""
    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, item: str, reason: str) -> None:
        self.items.append((str(item), reason))

    def __len__(self) -> int:
        return len(self.items)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{"item": i, "reason": r} for i, r in self.items], indent=1, ensure_ascii=False))
        return path


@dataclass
class ClassDataset:
    """Images (file paths or uint8 arrays) with integer labels into ``class_names``.

    ``grey_light_on_dark`` tells the image pipeline that these are light objects on a dark ground
    (MNIST-style), which it may invert so that they look like product photos to an ImageNet tower.
    """
    name: str
    class_names: list[str]
    images: list | np.ndarray
    labels: np.ndarray
    skipped: SkipReport = field(default_factory=SkipReport)
    grey_light_on_dark: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> "ClassDataset":
        idx = np.asarray(idx, dtype=np.int64)
        imgs = self.images[idx] if isinstance(self.images, np.ndarray) else [self.images[i] for i in idx]
        return ClassDataset(self.name, self.class_names, imgs, self.labels[idx], self.skipped, self.grey_light_on_dark)

    def per_class(self, n: int | None, seed: int = 0) -> "ClassDataset":
        """At most ``n`` items of each class, drawn with a fixed seed (``None`` keeps everything)."""
        if n is None:
            return self
        rng = np.random.RandomState(seed)
        idx = [rng.permutation(np.flatnonzero(self.labels == c))[:n] for c in range(len(self.class_names))]
        return self.subset(np.sort(np.concatenate(idx)))

    def fingerprint(self) -> str:
        """Content hash of the items (paths+sizes+mtimes or raw pixels) and labels: the cache key's data part."""
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.class_names, self.grey_light_on_dark]).encode())
        if isinstance(self.images, np.ndarray):
            h.update(np.ascontiguousarray(self.images).tobytes())
        else:
            for p in self.images:
                st = Path(p).stat() if Path(p).exists() else None
                h.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}".encode())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]


@dataclass
class CaptionDataset:
    """``paths[i]`` has captions ``captions[i]`` (default language) and ``translations[lang][i]``."""
    name: str
    paths: list[Path]
    captions: list[list[str]]
    translations: dict[str, list[list[str]]] = field(default_factory=dict)
    skipped: SkipReport = field(default_factory=SkipReport)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx) -> "CaptionDataset":
        idx = [int(i) for i in idx]
        return CaptionDataset(self.name, [self.paths[i] for i in idx], [self.captions[i] for i in idx],
                              {k: [v[i] for i in idx] for k, v in self.translations.items()}, self.skipped)

    def captions_in(self, lang: str) -> list[list[str]]:
        """Each image's captions in ``lang``: 'en' (the default captions), a translation ('zh'), or a mix such as
        'en+zh' (every listed language, in order, duplicates once), so one image has positives in both."""
        out: list[list[str]] = [[] for _ in self.paths]
        for part in lang.split("+"):
            if part in self.translations:
                src = self.translations[part]
            elif part in ("", "default", "en"):
                src = self.captions
            else:
                raise ClipforgeError(f"dataset '{self.name}' has no '{part}' captions; it has: {sorted(self.translations) or 'none'}")
            for i, caps in enumerate(src):
                out[i] = out[i] + [c for c in caps if c not in out[i]]
        return out

    def in_language(self, lang: str) -> "CaptionDataset":
        """The same images with ``lang`` captions (or an 'en+zh' mix) as the default; images without one are dropped."""
        if lang in ("", "default", "en") and lang not in self.translations:
            return self
        caps = self.captions_in(lang)
        keep = [i for i, c in enumerate(caps) if c]
        sub = self.subset(keep)
        return CaptionDataset(f"{self.name}[{lang}]", sub.paths, [caps[i] for i in keep], sub.translations, self.skipped)

    def pairs(self) -> tuple[list[str], np.ndarray]:
        """Every caption once, with the index of its image: the unit of training and of text->image retrieval."""
        texts, owner = [], []
        for i, caps in enumerate(self.captions):
            texts += caps
            owner += [i] * len(caps)
        return texts, np.asarray(owner, dtype=np.int64)

    def fingerprint(self) -> str:
        """Content key of the images (path, size, mtime) for the embedding cache; captions are keyed separately."""
        h = hashlib.sha256(self.name.encode())
        for p in self.paths:
            st = p.stat() if p.exists() else None
            h.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}".encode())
        return h.hexdigest()[:16]


def concat_captions(datasets: list[CaptionDataset]) -> CaptionDataset:
    """Several caption sets as one (``data.source`` given as a list): images in order, every language any of them
    has (an image of a set without it has no caption in it), one skip report for all."""
    if len(datasets) == 1:
        return datasets[0]
    langs = sorted({lang for d in datasets for lang in d.translations})
    skipped = SkipReport([item for d in datasets for item in d.skipped.items])
    return CaptionDataset("+".join(d.name for d in datasets), [p for d in datasets for p in d.paths],
                          [c for d in datasets for c in d.captions],
                          {lang: [c for d in datasets for c in d.translations.get(lang, [[]] * len(d))] for lang in langs},
                          skipped)

