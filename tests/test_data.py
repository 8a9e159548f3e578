"""Data: AwA2 / folder layouts, class descriptions, robust image decoding, splits, Fashion-MNIST idx files."""
from __future__ import annotations

import gzip
import io
import json
import random
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipforge.embed.cache import EmbeddingCache, embed_dataset
from clipforge.data import ClassDescriptions, load_descriptions, protocol_unseen, seen_unseen
from clipforge.data.dataset import SkipReport
from clipforge.data.descriptions import from_templates
from clipforge.data.fashion_mnist import CLASS_NAMES, PACKAGED_DIR, load_fashion_mnist, read_idx
from clipforge.data.folders import load_awa2, load_image_folder
from clipforge.data.images import load_image
from clipforge.errors import ConfigError
from clipforge.towers.base import ImagePreprocess, Tower


from imgutil import _jpeg_bytes, _noise  # noqa: E402


# -- AwA2 layout -------------------------------------------------------------------------------------

AWA_CLASSES = ["antelope", "grizzly+bear", "killer+whale", "beaver"]
AWA_TEST = ["beaver", "grizzly+bear"]


@pytest.fixture
def awa2_root(tmp_path):
    root = tmp_path / "AwA2"
    for c, name in enumerate(AWA_CLASSES):
        d = root / "JPEGImages" / name
        d.mkdir(parents=True)
        for i in range(5):
            _noise(100 * c + i).save(d / f"{name}_{i:05d}.jpg", "JPEG")
    (root / "classes.txt").write_text("".join(f"{i + 1}\t{n}\n" for i, n in enumerate(AWA_CLASSES)))
    (root / "trainclasses.txt").write_text("".join(f"{n}\n" for n in AWA_CLASSES if n not in AWA_TEST))
    (root / "testclasses.txt").write_text("".join(f"{n}\n" for n in AWA_TEST))
    (root / "class.txt").write_text("".join(f"{n.replace('+', ' ')}\n" for n in AWA_CLASSES))
    (root / "class_sentence.txt").write_text(
        "an antelope is a fast animal with horns\n"
        "a grizzly bear is big and brown | it lives in forests\n"
        "\n"  # blank lines are ignored
        "a killer whale is black and white\n"
        "a beaver builds dams\n")
    return root


def test_load_awa2_classes_unseen_and_files(awa2_root):
    ds, unseen = load_awa2(awa2_root)
    assert ds.class_names == AWA_CLASSES  # classes.txt order, not alphabetical
    assert sorted(unseen) == sorted(AWA_CLASSES.index(n) for n in AWA_TEST)
    assert all(isinstance(u, int) for u in unseen)
    assert len(ds) == 20
    assert np.bincount(ds.labels, minlength=4).tolist() == [5, 5, 5, 5]
    for path, label in zip(ds.images, ds.labels):
        assert Path(path).parent.name == AWA_CLASSES[label]


def test_load_awa2_missing_testclasses_raises(awa2_root):
    from clipforge.errors import ClipforgeError
    (awa2_root / "testclasses.txt").unlink()
    with pytest.raises(ClipforgeError, match="testclasses.txt"):
        load_awa2(awa2_root)


def test_awa2_line_per_class_description_files(awa2_root):
    ds, _ = load_awa2(awa2_root)
    names = ds.class_names
    sent = load_descriptions(names, str(awa2_root / "class_sentence.txt"))
    assert sent.class_names == names
    assert len(sent.sentences) == len(names)
    assert all(isinstance(s, list) and s for s in sent.sentences)
    assert sent.sentences[0] == ["an antelope is a fast animal with horns"]
    assert sent.sentences[1] == ["a grizzly bear is big and brown", "it lives in forests"]
    assert sent.sentences[3] == ["a beaver builds dams"]

    cls = load_descriptions(names, str(awa2_root / "class.txt"))
    assert cls.sentences == [[n.replace("+", " ")] for n in names]


def test_line_file_with_wrong_line_count_raises(awa2_root, tmp_path):
    bad = tmp_path / "three_lines.txt"
    bad.write_text("one\ntwo\nthree\n")
    with pytest.raises(ConfigError) as ei:
        load_descriptions(AWA_CLASSES, str(bad))
    msg = str(ei.value)
    assert "3" in msg and "non-empty lines" in msg and "4 classes" in msg


# -- YAML descriptions -------------------------------------------------------------------------------

def test_yaml_descriptions_list_and_string(tmp_path):
    f = tmp_path / "desc.yaml"
    f.write_text(yaml.safe_dump({
        "cat": ["a small pet that purrs", "  an animal with whiskers  ", "   "],
        "dog": "a loyal pet that barks",
        "extra class not asked for": "ignored",
    }))
    d = load_descriptions(["dog", "cat"], str(f))
    assert d.class_names == ["dog", "cat"]
    assert d.sentences == [["a loyal pet that barks"], ["a small pet that purrs", "an animal with whiskers"]]


def test_json_descriptions(tmp_path):
    f = tmp_path / "desc.json"
    f.write_text(json.dumps({"a": ["x", "y"], "b": "z"}))
    assert load_descriptions(["a", "b"], str(f)).sentences == [["x", "y"], ["z"]]


def test_yaml_missing_class_raises_naming_it(tmp_path):
    f = tmp_path / "desc.yaml"
    f.write_text(yaml.safe_dump({"cat": "purrs"}))
    with pytest.raises(ConfigError) as ei:
        load_descriptions(["cat", "zebra"], str(f))
    assert "zebra" in str(ei.value)
    assert "'cat'" not in str(ei.value)


def test_yaml_class_without_sentence_raises(tmp_path):
    f = tmp_path / "desc.yaml"
    f.write_text("cat: purrs\nzebra: []\n")
    with pytest.raises(ConfigError, match="zebra"):
        load_descriptions(["cat", "zebra"], str(f))


def test_yaml_not_a_mapping_raises(tmp_path):
    f = tmp_path / "desc.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError):
        load_descriptions(["a", "b"], str(f))


def test_names_and_templates_specs():
    names = ["cat", "ankle boot"]
    d = load_descriptions(names, "names")
    assert d.sentences == [["cat"], ["ankle boot"]]

    t = load_descriptions(names, "templates")
    assert len(t.sentences) == 2
    for n, sents in zip(names, t.sentences):
        assert len(sents) > 1
        assert all(n in s for s in sents)
        assert len(set(sents)) == len(sents)
    # 'auto' for a dataset with no packaged file: WordNet (templates only where WordNet is not installed;
    # tests/test_wordnet.py)
    assert load_descriptions(names, "auto", dataset="folder:x").sentences == load_descriptions(names, "wordnet").sentences


def test_templates_without_placeholder_raise():
    assert from_templates(["cat"], ["a {} here", "the {}"]).sentences == [["a cat here", "the cat"]]
    with pytest.raises(ConfigError, match="no placeholder"):
        from_templates(["cat"], ["a {} here", "no placeholder"])


def test_unknown_spec_raises(tmp_path):
    with pytest.raises(ConfigError, match="data.descriptions"):
        load_descriptions(["a"], str(tmp_path / "nope.yaml"))


def test_packaged_fashion_mnist_descriptions():
    d = load_descriptions(list(CLASS_NAMES), "auto", dataset="fashion-mnist")
    assert d.class_names == CLASS_NAMES
    assert len(d.sentences) == 10 and all(d.sentences)


# -- membership / vocabulary -------------------------------------------------------------------------

def test_membership_shared_sentence():
    shared = "a garment with long sleeves"
    d = ClassDescriptions(["shirt", "coat", "sandal"],
                          [["a shirt", shared], [shared, "a coat"], ["a sandal"]])
    vocab = d.vocabulary()
    assert vocab == ["a shirt", shared, "a coat", "a sandal"]  # distinct, first-seen order
    m = d.membership(vocab)
    assert m.shape == (3, 4)
    j = vocab.index(shared)
    assert m[0, j] == 1 and m[1, j] == 1 and m[2, j] == 0
    assert m.sum(axis=1).tolist() == [2, 2, 1]
    assert m.sum(axis=0).tolist() == [1, 2, 1, 1]
    # a vocabulary of some classes only: sentences outside it are ignored
    sub = d.vocabulary([2, 1])
    assert sub == ["a sandal", shared, "a coat"]
    m2 = d.membership(sub)
    assert m2[0].tolist() == [0, 1, 0]
    assert m2[1].tolist() == [0, 1, 1]


# -- splits ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,k,seed", [(10, 3, 0), (10, 3, 1), (50, 10, 7)])
def test_protocol_unseen(n, k, seed):
    got = protocol_unseen(n, k, seed)
    assert got == sorted(random.Random(seed).sample(range(n), k))
    assert len(set(got)) == k and all(0 <= c < n for c in got)
    assert protocol_unseen(n, k, seed) == got


def test_seen_unseen_partition_and_explicit_names():
    names = [f"c{i}" for i in range(10)]
    seen, unseen = seen_unseen(names, n_unseen=3, seed=0)
    assert unseen == protocol_unseen(10, 3, 0)
    assert sorted(seen + unseen) == list(range(10)) and not set(seen) & set(unseen)

    seen, unseen = seen_unseen(names, unseen_names=["c7", "c2"])
    assert unseen == [2, 7]
    assert seen == [0, 1, 3, 4, 5, 6, 8, 9]

    with pytest.raises(ConfigError) as ei:
        seen_unseen(names, unseen_names=["c1", "unicorn"])
    assert "unicorn" in str(ei.value) and "data.unseen" in str(ei.value)


# -- Fashion-MNIST -----------------------------------------------------------------------------------

def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("name", ["imgs-idx3-ubyte.gz", "imgs-idx3-ubyte"])
def test_read_idx_images_and_labels(tmp_path, name):
    rng = np.random.RandomState(0)
    imgs = rng.randint(0, 256, (7, 5, 3), dtype=np.uint8)  # rows != cols: catches transposed dims
    labels = rng.randint(0, 10, 7).astype(np.uint8)
    _write_idx(tmp_path / name, imgs)
    _write_idx(tmp_path / "labels-idx1-ubyte.gz", labels)
    got = read_idx(tmp_path / name)
    assert got.shape == (7, 5, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, imgs)
    got_l = read_idx(tmp_path / "labels-idx1-ubyte.gz")
    assert got_l.shape == (7,)
    np.testing.assert_array_equal(got_l, labels)


def test_load_packaged_fashion_mnist_test_split():
    assert PACKAGED_DIR.exists(), f"Fashion-MNIST not installed at {PACKAGED_DIR}: bash scripts/install.sh (Debian dataset-fashion-mnist)"
    ds = load_fashion_mnist("test")
    assert len(ds) == 10000
    assert ds.images.shape == (10000, 28, 28) and ds.images.dtype == np.uint8
    assert ds.class_names == CLASS_NAMES and len(ds.class_names) == 10
    assert np.bincount(ds.labels, minlength=10).tolist() == [1000] * 10
    assert ds.grey_light_on_dark


# -- property: YAML descriptions round-trip ----------------------------------------------------------

_TEXT = st.characters(blacklist_categories=("Cs", "Cc"))
_class_names = st.lists(st.text(_TEXT, min_size=1, max_size=20).filter(lambda s: s.strip()),
                        min_size=1, max_size=6, unique=True)
_sentence = st.text(_TEXT, min_size=1, max_size=40).map(str.strip).filter(bool)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), names=_class_names)
def test_yaml_descriptions_roundtrip(data, names):
    sentences = [data.draw(st.lists(_sentence, min_size=1, max_size=4), label=f"sentences[{i}]")
                 for i in range(len(names))]
    as_string = [len(s) == 1 and data.draw(st.booleans(), label=f"as_string[{i}]")
                 for i, s in enumerate(sentences)]
    mapping = {n: (s[0] if flat else s) for n, s, flat in zip(names, sentences, as_string)}
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "desc.yaml"
        f.write_text(yaml.safe_dump(mapping, allow_unicode=True, sort_keys=True), encoding="utf-8")
        got = load_descriptions(list(names), str(f))
    assert got.class_names == list(names)
    assert got.sentences == sentences
