"""WordNet class descriptions (data/wordnet.py): offline corpus preparation, sense choice, shared hypernym
sentences, the template fallback for names WordNet lacks, determinism."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from clipforge.data import load_descriptions
from clipforge.data.descriptions import from_templates
from clipforge.data import wordnet as wnmod
from clipforge.errors import ClipforgeError

NAMES = ["sandal", "sneaker", "ankle boot", "florbwidget"]


@pytest.fixture(scope="module")
def wn():
    return wnmod.wordnet()


def test_corpus_is_prepared_with_a_lexnames_file_nltk_can_read(tmp_path):
    root = wnmod.prepare_corpus(nltk_root=tmp_path)
    lines = (root / "lexnames").read_text().splitlines()
    assert len(lines) == 45
    number, name, pos = lines[6].split("\t")
    assert (number, name, pos) == ("06", "noun.artifact", "1")
    assert lines[44].split("\t") == ["44", "adj.ppl", "3"] and lines[2].split("\t")[2] == "4"
    assert (root / "index.sense").is_file() and (root / "data.noun").is_file()
    assert wnmod.prepare_corpus(nltk_root=tmp_path) == root          # second call: as it is
    # a fresh interpreter reads it through nltk's data path, the way wordnet() does
    code = ("import nltk, sys; nltk.data.path.insert(0, sys.argv[1]);"
            "from nltk.corpus.reader.wordnet import WordNetCorpusReader as R;"
            "wn = R(nltk.data.find('corpora/wordnet'), None);"
            "print(wn.synset('sandal.n.01').hypernyms()[0].name(), wn.synset('sandal.n.01').lexname())")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.split() == ["shoe.n.01", "noun.artifact"], out.stderr[-500:]


def test_missing_wordnet_is_one_error_naming_the_apt_packages(tmp_path):
    with pytest.raises(ClipforgeError, match="apt-get install wordnet-base wordnet-sense-index"):
        wnmod.prepare_corpus(source=tmp_path / "nowhere", nltk_root=tmp_path / "nltk")


def test_shared_hypernyms_give_identical_shared_sentences(wn):
    sandal, sneaker, boot, made_up = wnmod.describe(NAMES, wn)
    assert made_up is None
    shared_shoe = set(sandal) & set(sneaker)
    assert "a kind of shoe." in shared_shoe and "a kind of footwear." in shared_shoe
    assert "a kind of footwear." in boot and "a kind of shoe." not in boot     # a boot is footwear, not a shoe
    assert "a kind of footwear." in set(sandal) & set(boot)
    # each class keeps sentences of its own that tell it apart
    assert sandal[0] == "a sandal." and sneaker[0] == "a sneaker." and boot[0] == "an ankle boot."
    assert any("strap" in s for s in sandal) and not any("strap" in s for s in sneaker)
    assert set(sandal) - set(sneaker) and set(sneaker) - set(sandal)


def test_multiword_name_falls_back_to_its_head_noun_and_slash_names_use_each_part(wn):
    boot = wnmod.describe(["ankle boot"], wn)[0]
    assert "a kind of boot." in boot
    tee_top = wnmod.describe(["T-shirt/top", "Trouser", "Dress"], wn)[0]
    assert {"a T-shirt.", "a top.", "a kind of shirt."} <= set(tee_top)
    # 'top' among garments is the garment, not "the upper part of anything"
    assert any("shoulders to the waist" in s for s in tee_top)
    assert not any("upper part of anything" in s for s in tee_top)


def test_sense_choice_prefers_visible_things_and_the_list_context(wn):
    sign = wnmod.describe(["sign"], wn)[0]
    assert not any("clue" in s or "perceptible indication" in s for s in sign)   # sign.n.01 is a clue
    # the same word in two lists: among garments a coat is the garment, among paints a layer of coating
    coat_garment = wnmod.describe(["coat", "shirt", "trouser"], wn)[0]
    coat_paint = wnmod.describe(["coat", "varnish", "enamel"], wn)[0]
    assert "a kind of garment." in coat_garment and coat_garment != coat_paint


def test_a_class_wordnet_lacks_is_reported_and_gets_templates():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = load_descriptions(NAMES, "wordnet")
    assert d.fallback == ["florbwidget"]
    assert d.sentences[3] == from_templates(["florbwidget"]).sentences[0]
    assert any("florbwidget" in str(w.message) for w in caught)
    assert "a kind of shoe." in d.vocabulary()
    # the shared sentence is one vocabulary entry that both shoes have
    vocab = d.vocabulary()
    m = d.membership(vocab)
    assert m[:, vocab.index("a kind of shoe.")].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_output_is_deterministic_across_processes(wn):
    here = wnmod.describe(NAMES[:3] + ["T-shirt/top", "bag"], wn)
    code = ("import json, warnings; warnings.simplefilter('ignore'); from clipforge.data.wordnet import describe;"
            "print(json.dumps(describe(['sandal', 'sneaker', 'ankle boot', 'T-shirt/top', 'bag'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert json.loads(out.stdout) == here, out.stderr[-500:]


def test_odd_names_never_crash(wn):
    odd = ["", "   ", "猫", "a/b/c", "x" * 300, "日本 / cat", "C++", "3", "___"]
    got = wnmod.describe(odd, wn)
    assert len(got) == len(odd)
    assert got[0] is None and got[1] is None
    assert "a kind of feline." in got[5]                   # odd neighbours do not pull 'cat' to another sense
    crane = wnmod.describe(["crane", "heron", "stork"], wn)[0]
    assert "a kind of wading bird." in crane and not any("writer" in s for s in crane)   # not Stephen Crane


def test_auto_without_a_packaged_file_uses_wordnet_or_says_why_not(monkeypatch):
    d = load_descriptions(["sandal", "sneaker"], "auto", dataset="folder:x")
    assert "a kind of shoe." in d.vocabulary() and d.fallback == []
    monkeypatch.setattr(wnmod, "available", lambda: False)
    with pytest.warns(UserWarning, match="apt-get install wordnet-base wordnet-sense-index"):
        t = load_descriptions(["sandal", "sneaker"], "auto", dataset="folder:x")
    assert t.sentences == from_templates(["sandal", "sneaker"]).sentences
