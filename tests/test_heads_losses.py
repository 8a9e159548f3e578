import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.model.heads import CosineSimilarity, HeadEnsemble, Projection, SiameseSimilarity
from clipforge.losses.functional import clip_loss, multi_positive_infonce, pair_loss, siglip_loss
from clipforge.losses.classes import pair_negative_weights


def test_temperature_divides_cosine():
    sim = CosineSimilarity(init_temperature=0.05)
    a = F.normalize(torch.randn(4, 8), dim=-1)
    b = F.normalize(torch.randn(3, 8), dim=-1)
    # logits = cos / T: a LOWER temperature gives LARGER logits (the seed multiplied by T instead).
    assert torch.allclose(sim(a, b), (a @ b.T) / 0.05, atol=1e-5)
    hot = CosineSimilarity(init_temperature=1.0)
    assert sim(a, b).abs().max() > hot(a, b).abs().max()


def test_logit_scale_is_clamped_at_100():
    sim = CosineSimilarity(init_temperature=1e-4)
    a = F.normalize(torch.ones(1, 4), dim=-1)
    assert math.isclose(float(sim(a, a).detach()), 100.0, rel_tol=1e-4)


def test_duplicate_labels_are_not_negatives():
    # Batch of 4 images, two of them class 0; texts = one description per image (CLIP-style batch).
    labels = torch.tensor([0, 0, 1, 2])
    positives = (labels[:, None] == labels[None, :]).float()
    logits = torch.zeros(4, 4, requires_grad=True)
    multi_positive_infonce(logits, positives).backward()
    # image 0 vs text 1 (same class): gradient pushes the logit UP (negative grad), as for its own text.
    assert logits.grad[0, 1] < 0 and logits.grad[0, 0] < 0
    # arange targets (the seed MNIST CLIP) would push it DOWN, treating the duplicate as a negative.
    logits2 = torch.zeros(4, 4, requires_grad=True)
    F.cross_entropy(logits2, torch.arange(4)).backward()
    assert logits2.grad[0, 1] > 0


def test_clip_loss_identity_equals_cross_entropy():
    logits = torch.randn(5, 5)
    ce = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5)))
    assert torch.allclose(clip_loss(logits), ce, atol=1e-6)


def test_siglip_loss_prefers_matching_pairs():
    good = torch.eye(4) * 10 - 5
    assert siglip_loss(good) < siglip_loss(-good)


def test_pair_loss_variants():
    scores = torch.tensor([0.9, -0.8])
    labels = torch.tensor([1.0, -1.0])
    assert torch.isclose(pair_loss(scores, labels, "l1"), torch.tensor(0.15))
    assert pair_loss(scores, labels, "margin", 0.5) == 0
    assert pair_loss(-scores, labels, "bce") > pair_loss(scores, labels, "bce")


def test_pair_negatives_come_from_seen_classes_only():
    # 3 classes x 4 sentences; sentence 3 belongs only to class 2 (unseen), sentence 1 is shared by 0 and 1.
    M = torch.tensor([[1., 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]])
    w = pair_negative_weights(M, seen=[0, 1], labels=torch.tensor([0, 1]))
    assert w[:, 3].sum() == 0              # never an unseen class's sentence
    assert w[0].tolist() == [0, 0, 1, 0]   # class 0 may draw only class 1's own sentence
    assert w[1].tolist() == [1, 0, 0, 0]


def test_siamese_separate_branches_take_different_widths():
    s = SiameseSimilarity(1280, 384, hidden=16, shared=False)
    out = s(torch.randn(3, 1280), torch.randn(5, 384))
    assert out.shape == (3, 5) and out.abs().max() <= 1
    a, b = torch.randn(4, 1280), torch.randn(4, 384)
    assert torch.allclose(s.pair(a, b), torch.diagonal(s(a, b)), atol=1e-6)
    with pytest.raises(ValueError, match="equal widths"):
        SiameseSimilarity(1280, 384, shared=True)
    shared = SiameseSimilarity(16, 16, hidden=8, shared=True)
    assert shared.branch_a is shared.branch_b


def test_ensemble_output_is_mean_of_member_scores():
    ens = HeadEnsemble(lambda: Projection(6, 4), k=3, seed=1)
    x, t = torch.randn(5, 6), F.normalize(torch.randn(2, 4), dim=-1)
    members = ens.members_forward(x) @ t.T          # (3, 5, 2)
    avg = members.mean(0)
    ens_scores = ens(x) @ t.T
    # same ranking of texts for every image (the ensemble only rescales each row)
    assert torch.equal(avg.argmax(1), ens_scores.argmax(1))
    ratio = ens_scores / avg
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)


def test_batch_clip_objective_counts_same_class_captions_as_positives():
    """The seed "Contrastive" on class data: a caption per image from its class; same-class pairs are positives."""
    from clipforge.config import HeadConfig, LossConfig
    from clipforge.model.dual_encoder import DualEncoder
    from clipforge.losses.classes import ClassBatchData, class_objective
    from objutil import FeatTower
    torch.manual_seed(0)
    model = DualEncoder(FeatTower(10, "image"), FeatTower(6, "text"),
                        HeadConfig(embed_dim=6, init_temperature=0.07, learn_temperature=False, init_bias=None), ensemble=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    M = torch.eye(3).repeat_interleave(2, dim=1)                 # two sentences per class
    data = ClassBatchData(torch.randn(6, 10), labels, torch.randn(6, 6), M, [0, 1, 2])
    idx = torch.arange(6)
    z = model.image_head.members_forward(data.image_feats)[0]
    pos = (labels[:, None] == labels[None, :]).float()
    for reduction, factor in (("mean", 1.0), ("sum", 2.0)):
        step = class_objective(model, data, LossConfig(kind="batch-clip", reduction=reduction))
        torch.manual_seed(5)
        loss = step(idx)
        torch.manual_seed(5)
        caption = torch.multinomial(M[labels], 1).squeeze(1)
        assert all(M[labels[i], caption[i]] == 1 for i in range(6))   # each caption is of the image's class
        logits = model.similarity(z, model.embed_text_features(data.text_feats)[caption])
        assert torch.allclose(loss, factor * clip_loss(logits, pos), atol=1e-6)
        assert len(set(caption.tolist())) == 6                        # distinct captions: arange targets differ
        assert not torch.allclose(loss, factor * clip_loss(logits), atol=1e-3)
