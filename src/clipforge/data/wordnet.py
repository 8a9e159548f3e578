"""Class descriptions from WordNet, offline, for any list of English class names.

A class name becomes sentences the text tower can embed: the name, its WordNet synonyms, its gloss, and for every
hypernym above it (shoe, footwear, covering, ...) "a kind of shoe." plus the hypernym's own gloss. Hypernym
sentences are worded identically for every class under that hypernym, so classes that share a hypernym share
sentences: that is what lets the head learn an attribute ("footwear") on seen classes and carry it to unseen
ones, the way the hand-written fashion_mnist_descriptions.yaml does.

Sense choice is where a dictionary goes wrong for images ("sign" -> a clue, "top" -> the upper part of
anything), so a sense is picked in three steps:
  1. noun senses only, in tiers: those whose hypernym chain reaches a visible kind of thing (artifact, organism,
     natural object, food, body part; not a named instance such as a writer), then any physical entity, then the
     rest; the best non-empty tier is kept;
  2. within it, coherence with the other classes of the list: WordNet's first sense, unless another is closer
     (Wu-Palmer) to its nearest other classes by a clear margin ("top" among garments -> the garment);
  3. a name WordNet lacks tries its parts ("T-shirt/top" -> T-shirt, top) and a multiword name its head noun
     ("ankle boot" -> boot: "a kind of boot."). A name with no sense at all gets None; the caller gives it
     templates and reports it.

The corpus is Debian's ``wordnet-base`` + ``wordnet-sense-index`` (/usr/share/wordnet), read with nltk. nltk's
reader wants a ``lexnames`` file Debian does not ship, and only reads corpora under its data path, so on first use
the files are copied into ``<cache>/nltk/corpora/wordnet`` with ``lexnames`` written from the 45 lexicographer
files of lexnames(5WN), and that folder is added to nltk's path.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

from clipforge.errors import ClipforgeError
from clipforge.util.paths import cache_dir

APT_PACKAGES = ("wordnet-base", "wordnet-sense-index")
SOURCE = Path(os.environ.get("CLIPFORGE_WORDNET_DIR", "/usr/share/wordnet"))
# what nltk's WordNetCorpusReader opens (lexnames is written here; index.sense comes from wordnet-sense-index)
NEEDED = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj", "index.adv",
          "noun.exc", "verb.exc", "adj.exc", "adv.exc", "index.sense")
# lexnames(5WN), WordNet 3.0: file number = position; the syntactic category follows from the name's prefix
LEXNAMES = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
            "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
            "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
            "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
            "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
            "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
            "adj.ppl").split()
_POS_CODE = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

# tier 0: hypernym chains that end in something one can photograph
VISIBLE_ROOTS = ("artifact.n.01", "organism.n.01", "natural_object.n.01", "food.n.01", "food.n.02",
                 "body_part.n.01", "plant_part.n.01", "geological_formation.n.01")
# hypernyms too abstract to say anything about an image ("a kind of whole."); deeper ones are kept
ABSTRACT = {"instrumentality.n.03", "commodity.n.01", "consumer_goods.n.01", "living_thing.n.01",
            "organism.n.01", "causal_agent.n.01", "matter.n.03", "artifact.n.01", "whole.n.02", "object.n.01",
            "physical_entity.n.01", "entity.n.01", "abstraction.n.06", "thing.n.12", "unit.n.05"}
MAX_ANCESTORS = 8
MAX_SYNONYMS = 2
COHERENCE_K = 3           # a sense is judged by its 3 nearest other classes: a list may mix domains
COHERENCE_MARGIN = 0.1    # the Wu-Palmer gain a later sense needs over WordNet's first one
_PAREN = re.compile(r"\s*\([^()]*\)")


def _lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{_POS_CODE[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def missing_error() -> ClipforgeError:
    return ClipforgeError(f"WordNet is not installed (no {SOURCE}/index.sense or data.noun): "
                          f"apt-get install {' '.join(APT_PACKAGES)} (scripts/install.sh does it), "
                          "or choose data.descriptions=templates")


def prepare_corpus(source: Path = SOURCE, nltk_root: Path | None = None) -> Path:
    """``<nltk_root>/corpora/wordnet`` with Debian's WordNet files and a ``lexnames``; built once (atomically, so
    two processes starting together cannot leave half a corpus), returned as it is afterwards."""
    nltk_root = cache_dir("nltk") if nltk_root is None else nltk_root
    target = nltk_root / "corpora" / "wordnet"
    if all((target / f).is_file() for f in (*NEEDED, "lexnames")):
        return target
    if not all((source / f).is_file() for f in NEEDED):
        raise missing_error()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for f in sorted(source.iterdir()):
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
        (tmp / "lexnames").write_text(_lexnames_text())
        if target.exists():                      # a half corpus from an older run: replace it
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except OSError:
        if not all((target / f).is_file() for f in (*NEEDED, "lexnames")):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@functools.lru_cache(maxsize=1)
def wordnet():
    """nltk's WordNet reader over the prepared corpus (loaded once per process, ~3 s)."""
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        from clipforge.util.extras import MissingExtra
        raise MissingExtra("data.descriptions=wordnet", "wordnet", "nltk") from None
    root = prepare_corpus()
    data_root = str(root.parent.parent)
    if data_root not in nltk.data.path:
        nltk.data.path.insert(0, data_root)
    with warnings.catch_warnings():          # "multilingual functions are not available": no OMW, none needed
        warnings.simplefilter("ignore")
        return WordNetCorpusReader(str(root), None)


def available() -> bool:
    """True when WordNet can be read here (nltk installed, Debian files present or already prepared)."""
    try:
        import nltk  # noqa: F401
    except ImportError:
        return False
    prepared = cache_dir("nltk") / "corpora" / "wordnet"
    return all((SOURCE / f).is_file() for f in NEEDED) or (prepared / "lexnames").is_file()


# -- senses --------------------------------------------------------------------------------------------------

def _tier(synset) -> int:
    chain = {h.name() for h in synset.closure(lambda s: s.hypernyms() + s.instance_hypernyms())} | {synset.name()}
    if chain & set(VISIBLE_ROOTS) and not synset.instance_hypernyms():   # an instance is a name (Stephen Crane)
        return 0
    return 1 if "physical_entity.n.01" in chain else 2


def _lookup(wn, text: str) -> list:
    form = "_".join(text.strip().split())
    if not form:
        return []
    try:
        return list(wn.synsets(form, pos="n")) or list(wn.synsets(form.lower(), pos="n"))
    except Exception:       # nltk's morphology on odd characters: treat as unknown, never crash the job
        return []


def candidates(wn, name: str) -> list[tuple[str, bool, list]]:
    """[(part, is_head_noun, best-tier senses)] for each part of ``name`` WordNet knows."""
    out = []
    for part in [p.strip() for p in re.split(r"\s*/\s*|\s+or\s+", name) if p.strip()]:
        senses, head = _lookup(wn, part), False
        words = re.split(r"[\s_]+", part)
        if not senses and len(words) > 1:
            senses, head = _lookup(wn, words[-1]), True
        if senses:
            best = min(_tier(s) for s in senses)
            out.append((part, head, [s for s in senses if _tier(s) == best][:6]))
    return out


def choose_senses(wn, class_names: list[str]) -> list[list[tuple[str, bool, object]]]:
    """One sense per known part of every class: the sense closest to its ``COHERENCE_K`` nearest other classes
    (each class counts once, by its nearest candidate sense, so neither one odd name nor a list that mixes
    domains decides), and WordNet's first sense unless another beats it by ``COHERENCE_MARGIN``."""
    cands = [candidates(wn, n) for n in class_names]
    chosen = []
    for c, parts in enumerate(cands):
        others = [[s for _, _, ss in ps for s in ss] for d, ps in enumerate(cands) if d != c and ps]
        picked = []
        for part, head, senses in parts:
            best = senses[0]
            if len(senses) > 1 and others:
                sims = []
                for s in senses:
                    near = sorted((max((s.wup_similarity(o) or 0.0) for o in other) for other in others), reverse=True)
                    sims.append(sum(near[:COHERENCE_K]) / len(near[:COHERENCE_K]))
                i = max(range(len(senses)), key=lambda k: (round(sims[k], 6), -k))
                if sims[i] - sims[0] > COHERENCE_MARGIN:
                    best = senses[i]
            picked.append((part, head, best))
        chosen.append(picked)
    return chosen


# -- sentences -----------------------------------------------------------------------------------------------

def _words(lemma: str) -> str:
    return lemma.replace("_", " ")


def _a(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _sentence(text: str) -> str:
    text = _PAREN.sub("", text).strip().rstrip(";:,. ")
    return f"{text}." if text else ""


def _display(name: str) -> str:
    """'Ankle boot' -> 'ankle boot' (a capital that only starts a label), 'T-shirt' and 'DVD' kept."""
    return name[:1].lower() + name[1:] if name[1:2].islower() else name


def _ancestors(synset) -> list:
    """Hypernyms nearest first (breadth first, both parents of a multiple inheritance), abstract ones left out."""
    out, frontier, seen = [], [synset], {synset.name()}
    while frontier and len(out) < MAX_ANCESTORS:
        nxt = []
        for s in frontier:
            for h in s.hypernyms() + s.instance_hypernyms():
                if h.name() not in seen:
                    seen.add(h.name())
                    nxt.append(h)
        out.extend(h for h in nxt if h.name() not in ABSTRACT)
        frontier = nxt
    return out[:MAX_ANCESTORS]


def class_sentences(name: str, parts: list[tuple[str, bool, object]]) -> list[str]:
    """Sentences of one class from its chosen senses (see the module docstring)."""
    out = [_sentence(_a(_display(p))) for p, _, _ in parts]
    for part, head, s in parts:
        ancestors = _ancestors(s)
        if head:            # 'ankle boot' is a kind of boot: the head noun is its nearest hypernym
            ancestors = [s] + ancestors
        else:
            own = _display(part).lower().replace("-", " ")
            syn = [_words(lem) for lem in s.lemma_names() if _words(lem).lower().replace("-", " ") != own]
            out += [_sentence(_a(w)) for w in syn[:MAX_SYNONYMS]]
            out.append(_sentence(s.definition()))
        for h in ancestors:
            out.append(_sentence(f"a kind of {_words(h.lemma_names()[0])}"))
            out.append(_sentence(h.definition()))
    return list(dict.fromkeys(s for s in out if s))


def describe(class_names: list[str], wn=None) -> list[list[str] | None]:
    """WordNet sentences for every class, None for a class WordNet has no noun sense for (by any of its parts)."""
    wn = wordnet() if wn is None else wn
    return [class_sentences(n, parts) if parts else None
            for n, parts in zip(class_names, choose_senses(wn, class_names))]


__all__ = ["APT_PACKAGES", "available", "candidates", "choose_senses", "class_sentences", "describe",
           "prepare_corpus", "wordnet"]
