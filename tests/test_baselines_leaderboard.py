"""Closed-form baselines, the transductive rectifier, and the leaderboard writer."""
import json

import numpy as np

from clipforge.evaluate.baselines import ConSE, make
from benchmarks.leaderboard import write_leaderboard
from clipforge.evaluate.retrieval import retrieval_metrics
from clipforge.evaluate.transductive import cluster_and_match


def _paired(n=200, di=48, dt=16, noise=0.05, seed=0):
    rng = np.random.RandomState(seed)
    txt = rng.randn(n, dt).astype(np.float32)
    mix = rng.randn(dt, di).astype(np.float32)
    img = txt @ mix + noise * rng.randn(n, di).astype(np.float32)   # images carry the text information linearly
    return img, txt


def test_linear_maps_and_asif_recover_a_hidden_correspondence():
    img, txt = _paired()
    tr, te = np.arange(150), np.arange(150, 200)
    chance = retrieval_metrics(np.random.RandomState(1).randn(50, 16), txt[te], np.arange(50))["MR"]
    for name in ("least-squares", "procrustes", "asif"):
        b = make(name).fit(img[tr], txt[tr])
        m = retrieval_metrics(b.image_embed(img[te]), b.text_embed(txt[te]), np.arange(50))
        assert m["MR"] > chance + 0.3, (name, m["MR"], chance)
    ls = make("least-squares", ridge=1e-4).fit(img[tr], txt[tr])
    assert retrieval_metrics(ls.image_embed(img[te]), ls.text_embed(txt[te]), np.arange(50))["text_to_image_R@1"] > 0.9


def test_conse_is_a_probability_weighted_mix_of_class_texts():
    class_text = np.eye(4, 3, dtype=np.float32) + 0.01
    conse = ConSE(lambda f: f * 100.0, class_text)           # "logits" = features: a confident classifier
    emb = conse.image_embed(np.array([[1, 0, 0, 0], [0, 0, 1, 0]], dtype=np.float32))
    target = class_text / np.linalg.norm(class_text, axis=1, keepdims=True)
    assert np.allclose(emb[0], target[0], atol=1e-4) and np.allclose(emb[1], target[2], atol=1e-4)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1)


def test_transductive_rectification_fixes_noisy_zero_shot_labels_on_clustered_images():
    rng = np.random.RandomState(0)
    centres = rng.randn(3, 32) * 4
    y = np.repeat(np.arange(3), 100)
    x = centres[y] + rng.randn(300, 32)
    scores = np.eye(3)[y] * 0.3 + rng.rand(300, 3)                 # a weak zero-shot classifier
    assert (scores.argmax(1) == y).mean() < 0.8
    assert (cluster_and_match(x, scores, scale=10.0) == y).mean() > 0.97


def test_transductive_matching_is_one_to_one_when_a_hub_class_wins_every_argmax():
    """Zero-shot scores that call every image class 1 (a hub) but rank each image's own class slightly higher
    than the others do on average: argmax is 1/3 right, clusters + one-to-one matching recover the classes."""
    rng = np.random.RandomState(1)
    centres = rng.randn(3, 32) * 4
    y = np.repeat(np.arange(3), 100)
    x = centres[y] + rng.randn(300, 32)
    scores = 0.5 * np.eye(3)[1][None].repeat(300, 0) + 0.15 * np.eye(3)[y] + 0.1 * rng.rand(300, 3)
    assert (scores.argmax(1) == 1).all()
    assert (cluster_and_match(x, scores, scale=10.0) == y).mean() > 0.97


def test_leaderboard_ranks_methods_bolds_the_best_and_labels_settings(tmp_path):
    data = {"suite": "fashion-zsl", "model": "m", "wall_seconds": 1.0, "results": [
        {"method": "clipforge", "metrics": {"unseen_top1": 0.6, "seen_top1": 0.9, "gzsl_h": 0.5}},
        {"method": "clipforge-transductive", "metrics": {"unseen_top1": 0.8},
         "per_split": [{"setting": "transductive: uses the unlabelled unseen test images"}]},
        {"method": "asif", "metrics": {"unseen_top1": 0.5, "seen_top1": 0.95, "gzsl_h": 0.4}}]}
    (tmp_path / "fashion-zsl.json").write_text(json.dumps(data))
    md = write_leaderboard(tmp_path).read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "method" not in line]
    # inductive rows ranked first; the transductive row comes after them, unranked and never bold
    assert [r.split("|")[2].strip() for r in rows] == ["clipforge", "asif", "clipforge-transductive"]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "2", "–"]
    assert "**0.600**" in md and "**0.950**" in md and "0.800" in rows[2] and "**0.800**" not in md
    assert "transductive" in rows[2]
    assert "tux-retrieval.json is missing" in md
    (tmp_path / "tux-retrieval.json").write_text(json.dumps({"suite": "tux-retrieval", "results": [
        {"method": "clipforge", "metrics": {"MR": 0.6}}]}))
    md = write_leaderboard(tmp_path).read_text()
    assert "Not in this suite: `linear-probe` (retrieval has no classes" in md


def test_html_leaderboard_marks_best_among_inductive_rows_only():
    from clipforge.evaluate.report import leaderboard
    results = [
        {"method": "clipforge-transductive", "metrics": {"unseen_top1": 0.9},
         "per_split": [{"setting": "transductive: uses the unlabelled unseen test images"}]},
        {"method": "clipforge", "metrics": {"unseen_top1": 0.6}},
        {"method": "asif", "metrics": {"unseen_top1": 0.5}}]
    html = leaderboard(results)
    rows = html.split("<tr")[2:]  # skip the header row
    assert [r.split('class="method">')[1].split("<")[0] for r in rows] == ["clipforge", "asif", "clipforge-transductive"]
    assert 'class="best">0.600' in rows[0] and 'class="best"' not in rows[2]
    assert "transductive: uses the unlabelled" in rows[2] and "other-setting" in rows[2]
