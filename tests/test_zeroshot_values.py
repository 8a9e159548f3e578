"""Zero-shot classification (evaluate/zeroshot.py) on a stub model whose text vectors are written by hand, so each
score, probability and metric can be computed independently. Found by the mutation run (scripts/mutation.sh)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipforge.data.descriptions import ClassDescriptions
from clipforge.evaluate.zeroshot import (GAMMA_GRID, ZeroShotClassifier, evaluate_zeroshot, gzsl_h_curve, gzsl_metrics,
                                         topk_metrics)
from clipforge.model.heads import CosineSimilarity

# sentence -> text feature; the stub text head only normalises
TABLE = {"a cat": [1.0, 0.0, 0.0], "feline": [1.0, 1.0, 0.0], "a dog": [0.0, 2.0, 0.0], "a pet": [0.0, 1.0, 1.0]}


class _Tower:
    def __init__(self, table):
        self.table, self.calls = table, []

    def encode(self, items, batch_size=64):
        self.calls.append(list(items))
        return np.array([self.table[s] for s in items], np.float32)


class _Model:
    def __init__(self, similarity, table=TABLE, images=None):
        self.text_tower, self.similarity, self.images = _Tower(table), similarity, images

    def embed_text_features(self, feats):
        return F.normalize(feats.float(), dim=-1)

    def encode_image(self, images, batch_size=64):
        return self.images


# cat: two sentences; dog: one; pet: shared by both classes
DESC = ClassDescriptions(["cat", "dog"], [["a cat", "feline", "a pet"], ["a dog", "a pet"]])


def _norm(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def test_a_cosine_class_is_the_renormalised_mean_of_its_sentences():
    zs = ZeroShotClassifier(_Model(CosineSimilarity(0.5)), DESC)
    assert zs.vocab == ["a cat", "feline", "a pet", "a dog"] and zs.cosine
    cat = _norm(_norm(TABLE["a cat"]) + _norm(TABLE["feline"]) + _norm(TABLE["a pet"]))
    dog = _norm(_norm(TABLE["a dog"]) + _norm(TABLE["a pet"]))
    np.testing.assert_allclose(zs.weights.numpy(), np.stack([cat, dog]), atol=1e-6)
    img = np.array([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]], np.float32)
    np.testing.assert_allclose(zs.scores(img), img @ np.stack([cat, dog]).T, atol=1e-6)


def test_cached_text_features_are_used_instead_of_the_tower():
    model = _Model(CosineSimilarity(0.5))
    vocab = ["a cat", "feline", "a pet", "a dog"]
    feats = np.array([TABLE[s] for s in vocab], np.float32)
    zs = ZeroShotClassifier(model, DESC, text_feats=feats, vocab=vocab)
    assert model.text_tower.calls == []
    fresh = ZeroShotClassifier(_Model(CosineSimilarity(0.5)), DESC)
    np.testing.assert_allclose(zs.weights.numpy(), fresh.weights.numpy(), atol=1e-6)
    ZeroShotClassifier(model, DESC)                            # without them, the tower encodes the vocabulary once
    assert model.text_tower.calls == [vocab]


class _PairScore(torch.nn.Module):
    """A 'Siamese' similarity: score = first coordinate of the text minus that of the image."""
    def forward(self, a, b):
        return b[:, 0][None, :] - a[:, 0][:, None]


def test_a_siamese_class_score_is_the_mean_of_its_sentence_scores():
    zs = ZeroShotClassifier(_Model(_PairScore()), DESC)
    assert not zs.cosine and zs.weights is None
    img = torch.tensor([[0.25, 0.0, 0.0]])
    per_sentence = {s: _norm(TABLE[s])[0] - 0.25 for s in TABLE}
    want = [np.mean([per_sentence[s] for s in ("a cat", "feline", "a pet")]),
            np.mean([per_sentence[s] for s in ("a dog", "a pet")])]
    np.testing.assert_allclose(zs.scores(img)[0], want, atol=1e-6)


def test_classify_gives_softmax_probabilities_at_the_models_scale_top_k_and_restricted_classes():
    sim = CosineSimilarity(0.5)                             # scale 2
    zs = ZeroShotClassifier(_Model(sim), DESC)
    img = np.array([[0.0, 1.0, 0.0]], np.float32)
    s = zs.scores(img)[0]
    p = np.exp(2 * s) / np.exp(2 * s).sum()
    out = zs.classify(img)
    assert [n for n, _ in out[0]] == ["dog", "cat"] and s[1] > s[0]
    assert [q for _, q in out[0]] == pytest.approx([p[1], p[0]], abs=1e-6)
    assert zs.classify(img, k=1) == [[("dog", pytest.approx(p[1], abs=1e-6))]]
    only_cat = zs.classify(img, classes=[0])
    assert only_cat == [[("cat", pytest.approx(1.0))]]
    siamese = ZeroShotClassifier(_Model(_PairScore()), DESC)
    t = siamese.scores(img)[0]
    q = np.exp(10 * t) / np.exp(10 * t).sum()                 # a Siamese model's scores are sharpened by 10
    assert [v for _, v in sorted(siamese.classify(img)[0])] == pytest.approx([q[0], q[1]], abs=1e-6)


def test_topk_metrics_top5_with_five_classes_and_nan_without_images():
    labels = np.array([0, 1, 2, 3, 4, 5])
    s = np.zeros((6, 6), np.float32)
    for i, order in enumerate([[0, 1], [2, 1], [1, 2, 3, 4, 5, 0]]):
        s[i, order] = np.linspace(1, 0.5, len(order))
    # images 3..5 score every class 0: argsort puts class 0 first (stable) -> wrong, and within the first five
    m = topk_metrics(s, labels, list(range(6)))
    assert m["top1"] == pytest.approx(1 / 6)                  # only image 0 is right
    order = np.argsort(-s, 1)
    assert m["top5"] == pytest.approx(float(np.mean([labels[i] in order[i, :5] for i in range(6)])))
    assert "top5" in topk_metrics(s[:, :5][:5], labels[:5], list(range(5)))
    empty = topk_metrics(np.zeros((0, 3)), np.array([], int), [0, 1, 2])
    assert math.isnan(empty["top1"])


def test_h_curve_is_h_at_every_offset_of_the_grid():
    labels = np.array([0, 0, 1, 2])
    scores = np.array([[0.9, 0.1, 0.3], [0.5, 0.2, 0.45], [0.2, 0.9, 0.1], [0.7, 0.1, 0.6]], np.float32)
    grid = np.array([-0.5, 0.0, 0.05, 0.2])
    curve = gzsl_h_curve(scores, labels, seen=[0, 1], unseen=[2], grid=grid)
    assert curve.tolist() == [gzsl_metrics(scores, labels, [0, 1], [2], g)["gzsl_h"] for g in grid]
    assert curve[0] == 0.0 and curve[-1] > 0                 # seen-favouring offsets never find the unseen image
    assert len(gzsl_h_curve(scores, labels, [0, 1], [2])) == len(GAMMA_GRID) == 401
    assert GAMMA_GRID[0] == -1.0 and GAMMA_GRID[-1] == 1.0


def test_gzsl_h_is_zero_when_both_sides_are_zero():
    labels = np.array([0, 1])
    m = gzsl_metrics(np.array([[0.0, 1.0], [1.0, 0.0]], np.float32), labels, seen=[0], unseen=[1])
    assert (m["gzsl_seen"], m["gzsl_unseen"], m["gzsl_h"]) == (0.0, 0.0, 0.0)


def test_evaluate_zeroshot_with_templates_and_given_image_embeddings():
    table = {"a photo of a cat": [1.0, 0.0], "a cat": [1.0, 0.1], "a photo of a dog": [0.0, 1.0], "a dog": [0.1, 1.0]}
    img = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], np.float32)
    model = _Model(CosineSimilarity(0.5), table, images=img)
    out = evaluate_zeroshot(model, None, np.array([0, 1, 1]), ["cat", "dog"], ["a photo of a {}", "a {}"], image_emb=img)
    assert out == {"acc1": pytest.approx(2 / 3), "mean_per_class_recall": pytest.approx(0.75), "n": 3, "n_classes": 2}
    assert model.text_tower.calls == [["a photo of a cat", "a cat", "a photo of a dog", "a dog"]]
    again = evaluate_zeroshot(model, "images", np.array([0, 1, 1]), ["cat", "dog"], ["a photo of a {}", "a {}"])
    assert again == out                                       # image embeddings from the model this time
    five = {f"a {c}": np.eye(5)[i].tolist() for i, c in enumerate("vwxyz")}
    model5 = _Model(CosineSimilarity(0.5), five, images=np.eye(5, dtype=np.float32))
    m5 = evaluate_zeroshot(model5, None, np.arange(5), list("vwxyz"), ["a {}"])
    assert m5["acc1"] == 1.0 and m5["acc5"] == 1.0 and m5["n_classes"] == 5


def test_classify_returns_five_by_default_and_h_needs_only_a_positive_sum():
    table = {f"a {c}": np.eye(6)[i].tolist() for i, c in enumerate("uvwxyz")}
    zs = ZeroShotClassifier(_Model(CosineSimilarity(0.5), table), ClassDescriptions(list("uvwxyz"), [[f"a {c}"] for c in "uvwxyz"]))
    assert len(zs.classify(np.eye(6, dtype=np.float32)[:1])[0]) == 5
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2])                # seen 0 (1/2 right), unseen 1, 2 (1/2 and 0 right)
    pred = np.array([0, 1, 1, 0, 0, 0, 0, 0])
    s = np.eye(3, dtype=np.float32)[pred]
    m = gzsl_metrics(s, labels, seen=[0], unseen=[1, 2])
    assert (m["gzsl_seen"], m["gzsl_unseen"]) == (0.5, 0.25) and m["gzsl_h"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)


def test_evaluate_zeroshot_encodes_images_only_when_no_embeddings_are_given():
    table = {"a cat": [1.0, 0.0], "a dog": [0.0, 1.0]}
    calls = []

    class Model(_Model):
        def encode_image(self, images, batch_size=64):
            calls.append((images, batch_size))
            return np.eye(2, dtype=np.float32)
    model = Model(CosineSimilarity(0.5), table)
    evaluate_zeroshot(model, ["i0", "i1"], np.array([0, 1]), ["cat", "dog"], ["a {}"], image_emb=np.eye(2, dtype=np.float32))
    assert calls == []
    evaluate_zeroshot(model, ["i0", "i1"], np.array([0, 1]), ["cat", "dog"], ["a {}"])
    evaluate_zeroshot(model, ["i0"], np.array([0, 1]), ["cat", "dog"], ["a {}"], batch_size=8)
    assert calls == [(["i0", "i1"], 64), (["i0"], 8)]


def test_gzsl_is_uncalibrated_by_default_and_recall_skips_classes_without_images():
    labels = np.array([0, 1])
    scores = np.array([[0.9, 0.2, 0.0], [0.6, 0.5, 0.0]], np.float32)
    m = gzsl_metrics(scores, labels, seen=[0], unseen=[1])
    assert m["gzsl_gamma"] == 0.0 and (m["gzsl_seen"], m["gzsl_unseen"]) == (1.0, 0.0)
    t = topk_metrics(scores, labels, classes=[0, 1, 2])          # class 2 has no test image: not in the mean
    assert t["mean_per_class_recall"] == 0.5 and t["top1"] == 0.5
