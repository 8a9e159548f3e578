"""Prompts for zero-shot labels: which templates a class name gets, and how a name fills a template.

This is the one place every zero-shot path (``clipforge classify``, ``clipforge zeroshot``, the web service,
``evaluate.zeroshot.zero_shot_classifier``, training targets built from templates) takes its prompts from, so
the page, the CLI and the library give the same answer for the same labels.

* The language rule: a class name with Chinese (Han) characters gets ``ZH_TEMPLATES``, any other name
  ``EN_TEMPLATES``; each class of a mixed list uses its own language. An explicit template list overrides it
  (every class then uses that list).
* The article rule (``fill``): a name that brings its own article ("a cat", "an apple", "the Eiffel Tower") keeps
  it and replaces the template's article before ``{}``, so "a photo of a {}." + "a cat" is "a photo of a cat.",
  never "a photo of a a cat."; "an apple" gives "a photo of an apple.". A name without an article is put in
  unchanged (so prompts of article-free names, and every benchmark built on them, stay byte-identical).
* ``parse_templates``: the ``--templates`` option, a file with one template per line or an inline list.

It imports nothing from the rest of clipforge but errors, so data/descriptions.py and data/templates_zh.py
can both build on it without importing each other.
"""
from __future__ import annotations

import re
from pathlib import Path

from clipforge.errors import ConfigError

# A short CLIP-style set: fewer, varied templates help as much as CLIP's 80 on small text towers.
EN_TEMPLATES = [
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a product photo of a {}.",
    "a drawing of a {}.",
    "a {}.",
]

# The same eight prompts in Chinese ("一张{}的照片。" = "a photo of a {}.").
ZH_TEMPLATES = [
    "一张{}的照片。",
    "一张{}的黑白照片。",
    "一张低分辨率的{}的照片。",
    "这张{}的照片。",
    "一张{}的特写照片。",
    "一张{}的商品照片。",
    "一幅{}的画。",
    "一个{}。",
]

# label lists: commas, semicolons, newlines, and the Chinese comma, enumeration comma and semicolon
_LABEL_SPLIT = re.compile(r"[,\n;，、；]+")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# an English article opening a class name, followed by the rest of the name
_NAME_ARTICLE = re.compile(r"(a|an|the)\s+(?=\S)", re.IGNORECASE)
# an English article as the last word before a slot ("a photo of a " -> "a"); "A-line" or "data " do not count
_SLOT_ARTICLE = re.compile(r"(?:(?<=\s)|^)(a|an|the)(\s+)$", re.IGNORECASE)


def is_chinese(text: str) -> bool:
    """True when ``text`` has a Han character: the language rule's test."""
    return bool(_HAN.search(text))


def language_of(name: str) -> str:
    """'zh' for a name with Chinese characters, else 'en'."""
    return "zh" if is_chinese(name) else "en"


def template_set(language: str) -> list[str]:
    """The packaged templates of ``language`` ('en' or 'zh'), as a fresh list."""
    if language == "en":
        return list(EN_TEMPLATES)
    if language == "zh":
        return list(ZH_TEMPLATES)
    raise ConfigError(f"template language must be 'en' or 'zh', not {language!r}")


def templates_for(name: str) -> list[str]:
    """The prompt set in the language of ``name``."""
    return template_set(language_of(name))


def check_templates(templates: list[str], option: str = "templates") -> list[str]:
    """``templates`` as a list; one error line naming ``option`` when it is empty or a template lacks ``{}``."""
    out = list(templates)
    if not out:
        raise ConfigError(f"{option}: give at least one template containing '{{}}' where the class name goes")
    bad = [t for t in out if "{}" not in t]
    if bad:
        raise ConfigError(f"{option}: templates must contain '{{}}' where the class name goes; bad: {bad}")
    return out


def split_labels(text: str) -> list[str]:
    """'cat, dog\\n猫，狗' -> ['cat', 'dog', '猫', '狗']: the label list of the CLI and of the web service (inner
    spaces collapsed, duplicates dropped, order kept)."""
    out = (" ".join(raw.split()) for raw in _LABEL_SPLIT.split(text or ""))
    return list(dict.fromkeys(lab for lab in out if lab))


def _match_case(word: str, like: str) -> str:
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def fill(template: str, name: str) -> str:
    """``template`` with ``name`` in each ``{}``, never doubling an article (see the module docstring)."""
    m = _NAME_ARTICLE.match(name)
    if m is None:
        return template.replace("{}", name)
    article, bare = m.group(1), name[m.end():]
    parts = template.split("{}")
    out = [parts[0]]
    for after in parts[1:]:
        before = out[-1]
        slot = _SLOT_ARTICLE.search(before)
        if slot is None:
            out.append(name)
        else:
            out[-1] = before[:slot.start()] + _match_case(article, slot.group(1)) + slot.group(2)
            out.append(bare)
        out.append(after)
    return "".join(out)


def prompts(name: str, templates: list[str] | None = None) -> list[str]:
    """Every prompt of one class: ``templates`` (or the set of the name's language) filled with ``name``."""
    return [fill(t, name) for t in (templates_for(name) if templates is None else templates)]


def parse_templates(spec: str | None, option: str = "--templates") -> list[str] | None:
    """The ``--templates`` option: None (the language rule), a path to a UTF-8 file with one template per line
    (blank lines and lines starting with '#' skipped), or an inline list separated by '|' or, when there is no
    '|', by ','. A template with a comma of its own goes in a file or in a '|'-separated list."""
    if spec is None or not spec.strip():
        return None
    path = Path(spec)
    if "{}" not in spec and path.is_file():
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigError(f"{option}: file '{path}' is not UTF-8; re-save it as UTF-8") from None
        lines = [ln.strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
                 if ln.strip() and not ln.lstrip().startswith("#")]
        return check_templates(lines, f"{option} file '{path}'")
    if "{}" not in spec and (path.suffix or "/" in spec):
        raise ConfigError(f"{option}: '{spec}' is neither an existing file nor a template list with '{{}}' "
                          "(e.g. --templates 'a photo of a {},a drawing of a {}')")
    pieces = spec.split("|") if "|" in spec else spec.split(",")
    return check_templates([t.strip() for t in pieces if t.strip()], option)


__all__ = ["EN_TEMPLATES", "ZH_TEMPLATES", "is_chinese", "language_of", "template_set", "templates_for",
           "check_templates", "split_labels", "fill", "prompts", "parse_templates"]
