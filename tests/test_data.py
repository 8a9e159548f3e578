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

from clipforge.cache import EmbeddingCache, embed_dataset
from clipforge.data import ClassDescriptions, load_descriptions, protocol_unseen, seen_unseen
from clipforge.data.dataset import SkipReport
from clipforge.data.descriptions import from_templates
from clipforge.data.fashion_mnist import CLASS_NAMES, PACKAGED_DIR, load_fashion_mnist, read_idx
from clipforge.data.folders import load_awa2, load_image_folder
from clipforge.data.images import load_image
from clipforge.errors import ConfigError
from clipforge.towers.base import ImagePreprocess, Tower


def _noise(seed: int, size: int = 16, mode: str = "RGB") -> Image.Image:
    rng = np.random.RandomState(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(rng.randint(0, 256, (size, size, channels), dtype=np.uint8), mode)


def _jpeg_bytes(seed: int = 0, size: int = 16) -> bytes:
    buf = io.BytesIO()
    _noise(seed, size).save(buf, "JPEG")
    return buf.getvalue()


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
    # 'auto' for a dataset with no packaged file falls back to the templates
    assert load_descriptions(names, "auto", dataset="folder:x").sentences == t.sentences


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


# -- bad images through the embedding step -----------------------------------------------------------

class MeanTower(Tower):
    """A tiny fake image tower: the per-channel mean of an 8x8 preprocessed image."""
    modality = "image"
    dim = 3
    tower_id = "test:mean"

    def __init__(self):
        super().__init__()
        self.pre = ImagePreprocess(size=8)

    def prepare(self, items):
        return self.pre(items)

    def preprocess_key(self):
        return self.pre.key()

    def forward(self, x):
        return x.mean((2, 3))


def _write_bad_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """class 'clean' with 2 good images, class 'broken' with 3 good and 3 bad files (+ ignored sidecars).

    'broken' sorts first, so dropping the bad files shifts later items: a label taken by position
    instead of by kept index would be wrong.
    """
    clean, mixed = root / "clean", root / "broken"
    clean.mkdir(parents=True)
    mixed.mkdir(parents=True)
    good = []
    for i in range(2):
        p = clean / f"c{i}.jpg"
        _noise(i).save(p, "JPEG")
        good.append(p)

    p = mixed / "a_good.png"
    _noise(10).save(p, "PNG")
    good.append(p)
    p = mixed / "e_rgba.png"
    _noise(11, mode="RGBA").save(p, "PNG")
    good.append(p)
    p = mixed / "f_palette.png"
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0] * (254 * 3))
    pal.paste(0, (0, 0, 8, 16))
    pal.save(p, "PNG", transparency=0)
    good.append(p)

    bad = [mixed / "b_empty.jpg", mixed / "c_text.jpg", mixed / "d_truncated.jpg"]
    bad[0].write_bytes(b"")
    bad[1].write_text("this is not an image\n")
    bad[2].write_bytes(_jpeg_bytes(3)[:100])
    # not listed at all: a sidecar and a hidden file
    (mixed / "notes.txt").write_text("hello")
    (mixed / ".DS_Store").write_bytes(b"\0\0junk")
    return good, bad


def test_bad_images_are_skipped_and_reported(tmp_path):
    good, bad = _write_bad_folder(tmp_path / "imgs")
    ds = load_image_folder(tmp_path / "imgs")
    assert ds.class_names == ["broken", "clean"]
    assert sorted(ds.images) == sorted(str(p) for p in good + bad)  # sidecars and hidden files not listed

    tower = MeanTower()
    cache = EmbeddingCache(tmp_path / "c")
    feats, labels = embed_dataset(tower, ds, cache, progress=False, batch_size=4)

    good_idx = [i for i, p in enumerate(ds.images) if Path(p) in good]
    assert labels.tolist() == ds.labels[good_idx].tolist()
    assert labels.tolist() == [0, 0, 0, 1, 1]
    assert feats.shape == (5, 3) and feats.dtype == np.float32

    # features are those of the decoded images, in dataset order
    expected = tower.encode([load_image(ds.images[i])[0] for i in good_idx])
    np.testing.assert_allclose(feats, expected, atol=1e-5)

    assert sorted(p for p, _ in ds.skipped.items) == sorted(str(p) for p in bad)
    assert len(ds.skipped) == 3
    reasons = dict(ds.skipped.items)
    assert all(isinstance(r, str) and r.strip() for r in reasons.values())
    assert reasons[str(bad[0])] == "empty file"

    out = ds.skipped.write(tmp_path / "report" / "skipped.json")
    listed = json.loads(out.read_text())
    assert sorted(e["item"] for e in listed) == sorted(str(p) for p in bad)
    assert all(e["reason"] for e in listed)

    # second run: served from the cache, and the skipped files are reported again
    ds2 = load_image_folder(tmp_path / "imgs")
    feats2, labels2 = embed_dataset(tower, ds2, cache, progress=False)
    assert cache.hits == 1 and cache.misses == 1
    np.testing.assert_array_equal(feats2, feats)
    np.testing.assert_array_equal(labels2, labels)
    assert sorted(ds2.skipped.items) == sorted(ds.skipped.items)


def test_skip_report_write_roundtrip(tmp_path):
    r = SkipReport()
    r.add(Path("/x/ünïcode.jpg"), "empty file")
    r.add("y.png", "not an image")
    assert len(r) == 2
    data = json.loads(r.write(tmp_path / "deep" / "dir" / "s.json").read_text(encoding="utf-8"))
    assert data == [{"item": "/x/ünïcode.jpg", "reason": "empty file"}, {"item": "y.png", "reason": "not an image"}]


# -- load_image --------------------------------------------------------------------------------------

def test_load_image_rgba_composites_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    arr[0, 0] = (10, 20, 30, 255)  # opaque
    arr[1, 1] = (0, 0, 0, 128)  # half-transparent black
    arr[2, 2] = (200, 0, 0, 0)  # transparent, coloured
    p = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(p)
    img, reason = load_image(p)
    assert reason is None and img.mode == "RGB"
    out = np.asarray(img)
    assert out[3, 3].tolist() == [255, 255, 255]
    assert out[2, 2].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [10, 20, 30]
    half = 255 * (1 - 128 / 255)
    assert np.all(np.abs(out[1, 1].astype(float) - half) <= 1.0)


def test_load_image_palette_transparency_composites_on_white(tmp_path):
    good, _ = _write_bad_folder(tmp_path / "imgs")
    img, reason = load_image(good[-1])  # f_palette.png: left half transparent index 0, right half red
    assert reason is None and img.mode == "RGB"
    out = np.asarray(img)
    assert out[5, 2].tolist() == [255, 255, 255]
    assert out[5, 12].tolist() == [200, 30, 30]


def test_load_image_16bit_png(tmp_path):
    arr = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(arr).save(p)
    with Image.open(p) as raw:
        assert raw.mode.startswith("I")
    img, reason = load_image(p)
    assert reason is None and img.mode == "RGB"
    out = np.asarray(img)
    assert out.shape == (2, 2, 3)
    assert out[1, 1].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [0, 0, 0]
    assert abs(int(out[1, 0, 0]) - 30000 / 65535 * 255) <= 1


def test_load_image_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(p, "JPEG", quality=95)  # pure cyan
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    img, reason = load_image(p)
    assert reason is None and img.mode == "RGB"
    r, g, b = np.asarray(img)[4, 4].astype(int)
    assert r < 30 and g > 225 and b > 225


def test_load_image_exif_rotation(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(p, "JPEG", exif=exif.tobytes(), quality=95)
    with Image.open(p) as raw:
        assert raw.size == (40, 20)
    img, reason = load_image(p)
    assert reason is None
    assert img.size == (20, 40)
    out = np.asarray(img).astype(int)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # the left edge is now on top: red
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60  # bottom: blue


def test_load_image_failures_return_reasons(tmp_path):
    img, reason = load_image(tmp_path / "missing.png")
    assert img is None and reason == "file not found"
    p = tmp_path / "tiny.png"
    _noise(0, size=4).save(p)
    img, reason = load_image(p, min_side=8)
    assert img is None and "too small" in reason and "4x4" in reason
    img, reason = load_image(io.BytesIO(_jpeg_bytes(1)))
    assert reason is None and img.size == (16, 16)


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


@pytest.mark.skipif(not PACKAGED_DIR.exists(),
                    reason=f"Fashion-MNIST not installed at {PACKAGED_DIR} (Debian package dataset-fashion-mnist; "
                           "CI installs it)")
def test_load_packaged_fashion_mnist_test_split():
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
