"""Unit tests that each guard one realistic bug the rest of the suite let through (issue 16, item 10).

Every test here is fast (well under a second) and compares against a value computed independently of the code
under test (by hand, by a loop, or from how the data were made), so a plausible one-line bug in the core makes
it fail. ``scripts/mutation.sh`` runs these with the other fast unit tests of the same modules.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipforge.evaluate.baselines import LinearMap, make
from clipforge.config import HeadConfig
from clipforge.evaluate.zeroshot import gzsl_metrics, topk_metrics
from clipforge.model.heads import CosineSimilarity
from clipforge.index.embedding import digest_items, file_digest
from clipforge.index.sources import SourceItem
from clipforge.losses.functional import clip_loss, multi_positive_infonce
from clipforge.model.dual_encoder import DualEncoder

from objutil import FeatTower


# -- losses: the class-softmax objective is not square -----------------------------------------------------------

def _reference_infonce(logits, targets):
    """Row-wise cross-entropy against normalised targets, written out with math.exp over each row."""
    total = 0.0
    for row, t in zip(logits.tolist(), targets.tolist()):
        lse = math.log(sum(math.exp(v) for v in row))
        w = sum(t)
        total += -sum((ti / w) * (v - lse) for v, ti in zip(row, t))
    return total / len(logits)


def test_class_softmax_over_descriptions_of_a_non_square_batch():
    """3 images x 5 class descriptions: the softmax runs over each image's descriptions (the columns)."""
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, 1.5],
                           [0.1, 3.0, 0.2, -0.5, 0.0],
                           [-2.0, 0.0, 1.0, 2.5, 0.3]])
    # image 0 has two positive descriptions (a class described twice), the others one each
    targets = torch.tensor([[1.0, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0]])
    got = float(multi_positive_infonce(logits, targets))
    assert got == pytest.approx(_reference_infonce(logits, targets), abs=1e-6)
    # the same number by hand for row 1 alone: -log softmax(row)[1]
    row = logits[1].tolist()
    by_hand = -(row[1] - math.log(sum(math.exp(v) for v in row)))
    assert float(multi_positive_infonce(logits[1:2], targets[1:2])) == pytest.approx(by_hand, abs=1e-6)


def test_class_softmax_gradient_sums_to_zero_over_each_images_descriptions():
    """d loss / d logits = (softmax - target) / N per row: each row's gradient sums to 0 (a column softmax would not)."""
    logits = torch.tensor([[1.0, -0.5, 0.3, 2.0], [0.0, 0.7, -1.2, 0.4]], requires_grad=True)
    targets = torch.tensor([[0.0, 0, 0, 1], [0, 1, 1, 0]])
    multi_positive_infonce(logits, targets).backward()
    expected = (F.softmax(logits.detach(), -1) - targets / targets.sum(-1, keepdim=True)) / 2
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_clip_loss_on_a_non_square_batch_is_the_mean_of_both_directions():
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([[1.0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]])
    want = 0.5 * (_reference_infonce(logits, pos) + _reference_infonce(logits.T, pos.T))
    assert float(clip_loss(logits, pos)) == pytest.approx(want, abs=1e-6)


# -- heads: a learnable temperature learns ------------------------------------------------------------------------

def _step_temperature(sim, params):
    a = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    before = float(sim.logit_scale.detach())
    loss = clip_loss(sim(a, a))          # matching pairs on the diagonal: a lower temperature lowers the loss
    loss.backward()
    opt = torch.optim.SGD(params, lr=0.1)
    opt.step()
    return before, float(sim.logit_scale.detach())


def test_learnable_temperature_gets_a_gradient_and_moves_after_a_step():
    sim = CosineSimilarity(init_temperature=0.5, learnable=True)
    assert sim.logit_scale.requires_grad
    before, after = _step_temperature(sim, [p for p in sim.parameters() if p.requires_grad])
    assert sim.logit_scale.grad is not None and float(sim.logit_scale.grad) < 0   # sharper is better here
    assert after > before + 1e-4
    assert float(sim.scale.detach()) == pytest.approx(math.exp(after), rel=1e-6)


def test_fixed_temperature_gets_no_gradient_and_stays_put():
    sim = CosineSimilarity(init_temperature=0.5, learnable=False)
    assert not sim.logit_scale.requires_grad
    a = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), dim=-1).requires_grad_()
    clip_loss(sim(a, a)).backward()
    assert sim.logit_scale.grad is None
    assert float(sim.scale) == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize("learn", [True, False])
def test_head_config_learn_temperature_reaches_the_model(learn):
    torch.manual_seed(0)
    model = DualEncoder(FeatTower(5, "image"), FeatTower(5, "text"),
                        HeadConfig(embed_dim=4, init_temperature=0.2, learn_temperature=learn, init_bias=None), ensemble=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert ("similarity.logit_scale" in trainable) == learn
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(2))
    z = model.image_head.members_forward(x)[0]
    before = float(model.similarity.logit_scale.detach())
    clip_loss(model.similarity(z, z)).backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    moved = abs(float(model.similarity.logit_scale.detach()) - before) > 1e-5
    assert moved == learn


# -- index: the same content twice in one batch is indexed once ----------------------------------------------------

def _files(tmp_path, contents):
    items = []
    for i, data in enumerate(contents):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(data)
        items.append(SourceItem(str(p), caption=f"caption {i}"))
    return items


def test_digest_drops_a_repeat_within_one_build_batch_and_names_the_first(tmp_path):
    items = _files(tmp_path, [b"alpha", b"beta", b"alpha", b"gamma", b"beta"])
    todo, skipped, already = digest_items(items, {}, workers=2)
    assert [it.path for it, _, _ in todo] == [items[0].path, items[1].path, items[3].path]
    assert len({sha for _, sha, _ in todo}) == 3
    assert dict(skipped) == {items[2].path: f"same content as {items[0].path}",
                             items[4].path: f"same content as {items[1].path}"}
    assert already == 0


def test_digest_of_an_add_batch_skips_known_content_and_repeats_within_the_batch(tmp_path):
    items = _files(tmp_path, [b"old", b"new", b"new", b"old"])
    known = {file_digest(items[0].path)[0]: 7}
    todo, skipped, already = digest_items(items, known, workers=1)
    assert [it.path for it, _, _ in todo] == [items[1].path]
    assert already == 2
    assert dict(skipped) == {items[2].path: f"same content as {items[1].path}"}


def test_digest_records_sha256_and_size_and_reports_unreadable_files(tmp_path):
    import hashlib
    items = _files(tmp_path, [b"x" * 3000])
    items.append(SourceItem(str(tmp_path / "gone.png")))
    todo, skipped, _ = digest_items(items, {}, workers=2)
    (it, sha, size), = todo
    assert sha == hashlib.sha256(b"x" * 3000).hexdigest() and size == 3000
    assert skipped[0][0] == items[1].path and skipped[0][1].startswith("cannot read")


def test_file_digest_reads_files_larger_than_one_block(tmp_path):
    import hashlib
    data = bytes(range(256)) * 5000 + b"tail"          # 1.28 MB: more than one 1 MiB read
    p = tmp_path / "big.bin"
    p.write_bytes(data)
    assert file_digest(str(p)) == (hashlib.sha256(data).hexdigest(), len(data))


# -- baselines: Procrustes is an orthogonal map ---------------------------------------------------------------------

def _rotation(d, seed):
    q, r = np.linalg.qr(np.random.RandomState(seed).randn(d, d))
    return q * np.sign(np.diag(r))


def test_procrustes_map_is_orthogonal():
    rng = np.random.RandomState(0)
    txt = rng.randn(120, 16).astype(np.float32)
    img = txt @ rng.randn(16, 40).astype(np.float32) + 0.3 * rng.randn(120, 40).astype(np.float32)
    b = make("procrustes").fit(img, txt)
    assert b.w.shape == (16, 16)
    np.testing.assert_allclose(b.w @ b.w.T, np.eye(16), atol=1e-5)
    np.testing.assert_allclose(b.pca.T @ b.pca, np.eye(16), atol=1e-5)     # PCA columns are orthonormal too
    ls = make("least-squares").fit(img, txt)                                  # the ridge map is not orthogonal
    assert np.abs(ls.w.T @ ls.w - np.eye(ls.w.shape[1])).max() > 0.1


def test_procrustes_recovers_a_known_rotation():
    """Texts: the unit vectors +-q_k of a random orthonormal basis (unit norm, zero mean, isotropic), so the
    fit's normalising, centring and standardising only rescale them; images: those texts rotated by R."""
    d = 8
    q = _rotation(d, 1)
    txt = np.concatenate([q, -q]).astype(np.float64)
    r = _rotation(d, 2)
    img = txt @ r
    b = LinearMap(orthogonal=True).fit(img, txt)
    total = b.pca @ b.w                                    # the linear map after standardising: R^-1 = R^T
    np.testing.assert_allclose(total, r.T, atol=1e-6)
    np.testing.assert_allclose(b.image_embed(img), b.text_embed(txt), atol=1e-5)
    held_out = np.random.RandomState(3).randn(5, d)       # unseen directions map the same way
    held_out /= np.linalg.norm(held_out, axis=1, keepdims=True)
    np.testing.assert_allclose(b.image_embed(held_out @ r), b.text_embed(held_out), atol=1e-5)


# -- zero-shot: GZSL accuracies are per-class means ----------------------------------------------------------------

def _scores_for(pred, n_classes):
    s = np.zeros((len(pred), n_classes), np.float32)
    s[np.arange(len(pred)), pred] = 1.0
    return s


def test_gzsl_accuracies_are_means_over_classes_not_over_images():
    # seen 0 (8 images, all right) and 1 (2 images, both wrong); unseen 2 (1 image, right) and 3 (3 images, 1 right)
    labels = np.array([0] * 8 + [1] * 2 + [2] + [3] * 3)
    pred = np.array([0] * 8 + [0, 2] + [2] + [3, 1, 2])
    m = gzsl_metrics(_scores_for(pred, 4), labels, seen=[0, 1], unseen=[2, 3])
    assert m["gzsl_seen"] == pytest.approx((1.0 + 0.0) / 2)          # plain accuracy would be 8/10
    assert m["gzsl_unseen"] == pytest.approx((1.0 + 1 / 3) / 2)      # plain accuracy would be 2/4
    acc_s, acc_u = 0.5, 2 / 3
    assert m["gzsl_h"] == pytest.approx(2 * acc_s * acc_u / (acc_s + acc_u))


def test_gzsl_gamma_lowers_seen_scores_only():
    labels = np.array([0, 0, 0, 1])
    scores = np.array([[0.9, 0.2], [0.9, 0.2], [0.9, 0.2], [0.6, 0.5]], np.float32)
    plain = gzsl_metrics(scores, labels, seen=[0], unseen=[1], gamma=0.0)
    assert (plain["gzsl_seen"], plain["gzsl_unseen"], plain["gzsl_h"]) == (1.0, 0.0, 0.0)
    calibrated = gzsl_metrics(scores, labels, seen=[0], unseen=[1], gamma=0.2)     # 0.6-0.2 < 0.5, 0.9-0.2 > 0.2
    assert (calibrated["gzsl_seen"], calibrated["gzsl_unseen"]) == (1.0, 1.0) and calibrated["gzsl_gamma"] == 0.2
    too_far = gzsl_metrics(scores, labels, seen=[0], unseen=[1], gamma=0.8)
    assert (too_far["gzsl_seen"], too_far["gzsl_unseen"]) == (0.0, 1.0)


def test_topk_mean_per_class_recall_differs_from_top1_on_unequal_classes():
    labels = np.array([5] * 6 + [7] * 2)                  # class ids that are not 0..C-1
    pred = np.array([5] * 6 + [5, 7])
    s = _scores_for(pred, 8)
    m = topk_metrics(s, labels, classes=[5, 7])
    assert m["top1"] == pytest.approx(7 / 8)
    assert m["mean_per_class_recall"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["confusion"] == [[6, 0], [1, 1]]
    assert "top5" not in m


def test_index_build_and_add_keep_one_record_per_content(tmp_path):
    """Through ImageIndex (slower, ~10 s for the session model): a copy of an image within one build, and a new
    image twice within one add, are each indexed once and listed as skipped with the file they repeat."""
    import shutil

    import useutil
    from clipforge.index import ImageIndex
    coll = useutil.make_shapes(tmp_path / "c1", per_class=2, seed=1)             # 8 distinct images
    shutil.copy(coll / "circle" / "0.png", coll / "square" / "copy-of-circle.png")
    ix = ImageIndex.build(coll, useutil.trained_model_dir(), tmp_path / "ix", progress=False)
    assert len(ix) == 8 and len({r.sha256 for r in ix.records(range(8)).values()}) == 8
    reasons = dict(ix.report.skipped)
    assert list(reasons) == [str(coll / "square" / "copy-of-circle.png")]
    assert reasons[str(coll / "square" / "copy-of-circle.png")] == f"same content as {coll / 'circle' / '0.png'}"

    more = tmp_path / "c2"
    more.mkdir()
    useutil.draw("circle", np.random.RandomState(9)).save(more / "new.png")
    shutil.copy(more / "new.png", more / "new-again.png")
    shutil.copy(coll / "line" / "1.png", more / "old.png")
    report = ix.add(more, progress=False)
    assert (report.added, report.already_indexed, len(ix)) == (1, 1, 9)
    assert dict(report.skipped) == {str(more / "new.png"): f"same content as {more / 'new-again.png'}"}


def test_file_digest_refuses_a_symlink_and_digest_reports_why(tmp_path):
    """O_NOFOLLOW: a file swapped for a symlink after listing is not read through the link."""
    import os
    real = tmp_path / "real.png"
    real.write_bytes(b"content")
    link = tmp_path / "link.png"
    os.symlink(real, link)
    with pytest.raises(OSError):
        file_digest(str(link))
    todo, skipped, _ = digest_items([SourceItem(str(link)), SourceItem(str(tmp_path / "gone.png"))], {}, workers=1)
    assert todo == []
    assert skipped[1] == (str(tmp_path / "gone.png"), "cannot read: No such file or directory")
