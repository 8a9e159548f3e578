"""Class -> text descriptions: names, sentence templates, or a user file of descriptions.

A class may have several sentences. Zero-shot uses them the way CLIP's template ensembles do (each
sentence embedded, normalised, averaged, re-normalised); training uses each sentence as a positive of
its class. Sentences that several classes share (attributes such as "a garment with long sleeves")
are kept shared on purpose: they are the bridge that lets attributes learned on seen classes reach
unseen ones.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from clipforge.errors import ConfigError
from clipforge.data.prompts import EN_TEMPLATES, check_templates, prompts

# The English prompt set (data/prompts.py holds it, beside its Chinese counterpart and the language rule).
DEFAULT_TEMPLATES = EN_TEMPLATES

PACKAGED = {"fashion-mnist": "fashion_mnist_descriptions.yaml"}


@dataclass
class ClassDescriptions:
    """``sentences[c]`` is the list of descriptions of class ``c`` (same order as ``class_names``).

    ``fallback``: the classes that asked for WordNet descriptions but got templates (WordNet lacks them)."""
    class_names: list[str]
    sentences: list[list[str]]
    fallback: list[str] = field(default_factory=list)

    def vocabulary(self, classes: list[int] | None = None) -> list[str]:
        """The distinct sentences of the given classes, in a stable order."""
        classes = range(len(self.class_names)) if classes is None else classes
        seen, out = set(), []
        for c in classes:
            for s in self.sentences[c]:
                if s not in seen:
                    seen.add(s)
                    out.append(s)
        return out

    def membership(self, vocab: list[str]) -> np.ndarray:
        """(n_classes, len(vocab)) 0/1 matrix: does class c have sentence v? Shared sentences give several 1s."""
        m = np.zeros((len(self.class_names), len(vocab)), dtype=np.float32)
        index = {s: i for i, s in enumerate(vocab)}
        for c, sents in enumerate(self.sentences):
            for s in sents:
                if s in index:
                    m[c, index[s]] = 1.0
        return m


def from_templates(class_names: list[str], templates: list[str] | None = None) -> ClassDescriptions:
    """Every class name in every template, by the rules of data/prompts.py: ``templates=None`` gives each class
    the prompts of its own language (Chinese names ZH_TEMPLATES, other names DEFAULT_TEMPLATES), so mixed lists
    work; a name's own article is never doubled ("a cat" -> "a photo of a cat.")."""
    if templates is not None:
        templates = check_templates(templates)
    return ClassDescriptions(list(class_names), [prompts(n, templates) for n in class_names])


def from_wordnet(class_names: list[str]) -> ClassDescriptions:
    """WordNet sentences (data/wordnet.py); a class WordNet lacks gets the templates, and is listed in
    ``fallback`` and in a warning, so a run says which classes were described by their name only."""
    from clipforge.data.wordnet import describe
    found = describe(list(class_names))
    fallback = [n for n, s in zip(class_names, found) if s is None]
    if fallback:
        warnings.warn(f"WordNet has no noun sense for classes {fallback}: they get the name templates instead",
                      stacklevel=2)
    return ClassDescriptions(list(class_names), [s if s is not None else prompts(n) for n, s in zip(class_names, found)],
                             fallback)


def _parse_file(path: Path, class_names: list[str]) -> list[list[str]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"description file '{path}' is not UTF-8 (byte {e.start}: {e.reason}); re-save it as UTF-8") from None
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        try:
            # BaseLoader: every key and sentence stays the text it is written as, so classes named 0..9, 'yes' or
            # 'null' match their entries (safe_load would turn those keys into ints, booleans and None)
            data = yaml.load(text, Loader=yaml.BaseLoader)
        except yaml.YAMLError as e:
            raise ConfigError(f"description file '{path}' is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"description file '{path}' must map class name -> sentence or list of sentences")
        missing = [n for n in class_names if n not in data]
        if missing:
            raise ConfigError(f"description file '{path}' has no entry for classes {missing}")
        out = []
        for n in class_names:
            v = data[n]
            items = [v] if isinstance(v, str) else (v if isinstance(v, list) else None)
            if items is None or not all(isinstance(s, str) for s in items):
                raise ConfigError(f"description file '{path}': class '{n}' must have a sentence or a list of sentences")
            items = [s.strip() for s in items if s.strip()]
            if not items:
                raise ConfigError(f"description file '{path}': class '{n}' has no sentence")
            out.append(items)
        return out
    # One line per class, in class order (the AwA2-seed layout: class.txt, class_sentence.txt).
    # A line may hold several sentences separated by ' | '.
    # Lines end at \n, \r\n or \r only (str.splitlines would also split inside a sentence at U+2028, U+0085, ...).
    lines = [ln.strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if ln.strip()]
    if len(lines) != len(class_names):
        raise ConfigError(f"description file '{path}' has {len(lines)} non-empty lines but there are "
                          f"{len(class_names)} classes; write one line per class, in class order")
    out = [[s.strip() for s in f" {ln} ".split(" | ") if s.strip()] for ln in lines]
    empty = [n for n, sents in zip(class_names, out) if not sents]
    if empty:
        raise ConfigError(f"description file '{path}': classes {empty} have no sentence (only ' | ' separators)")
    return out


def load_descriptions(class_names: list[str], spec: str = "auto", dataset: str | None = None) -> ClassDescriptions:
    """Build descriptions from ``spec``: 'names', 'templates', 'wordnet', 'auto' or a path (.yaml/.json/.txt).

    'auto' is the packaged file of ``dataset`` where there is one, else WordNet; where WordNet is not installed,
    the templates, with a warning naming what to install."""
    if spec == "auto":
        fname = PACKAGED.get(dataset or "")
        if fname is None:
            from clipforge.data.wordnet import APT_PACKAGES, available
            if available():
                return from_wordnet(class_names)
            warnings.warn("data.descriptions=auto: WordNet is not installed, so classes get the name templates; "
                          f"for WordNet descriptions: apt-get install {' '.join(APT_PACKAGES)} and "
                          "pip install 'clipforge[wordnet]'", stacklevel=2)
            return from_templates(class_names)
        spec = str(resources.files("clipforge.data").joinpath(fname))
    if spec == "wordnet":
        return from_wordnet(class_names)
    if spec == "names":
        return ClassDescriptions(class_names, [[n] for n in class_names])
    if spec == "templates":
        return from_templates(class_names)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"config field 'data.descriptions': '{spec}' is neither 'names', 'templates', 'wordnet', "
                          "'auto' nor an existing file")
    return ClassDescriptions(class_names, _parse_file(path, class_names))
