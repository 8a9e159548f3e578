"""Heads and similarities in heads.py against values computed independently (explicit formulas, loops), so a
changed constant, axis or branch shows. Found by the mutation run (scripts/mutation.sh)."""
import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.model.heads import MAX_LOGIT_SCALE, CosineSimilarity, HeadEnsemble, LabelBridge, Projection, SiameseSimilarity, blend


def test_projection_standardises_with_the_training_statistics():
    feats = torch.tensor([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0], [5.0, 20.0, 5.0]])   # feature 2 never varies
    p = Projection(3, 2)
    p.fit_normalizer(feats)
    assert torch.allclose(p.mean, torch.tensor([3.0, 20.0, 5.0]))
    assert torch.allclose(p.std[:2], torch.tensor([2.0, 10.0])) and math.isinf(float(p.std[2]))
    x = torch.tensor([[5.0, 0.0, 123.0]])
    with torch.no_grad():
        want = p.net(torch.tensor([[1.0, -2.0, 0.0]]))                  # (x - mean) / std, the dead unit reads 0
        assert torch.allclose(p(x), want, atol=1e-6)


def test_a_nearly_dead_feature_counts_as_dead_relative_to_the_largest_spread():
    feats = torch.tensor([[0.0, 0.0], [1000.0, 0.05], [2000.0, 0.1]])   # std 1000 and 0.05: ratio 5e-5 < 1e-4
    p = Projection(2, 1)
    p.fit_normalizer(feats)
    assert math.isinf(float(p.std[1])) and float(p.std[0]) == pytest.approx(1000.0)
    alive = Projection(2, 1)
    alive.fit_normalizer(torch.tensor([[0.0, 0.0], [1000.0, 0.5], [2000.0, 1.0]]))   # ratio 5e-4: kept
    assert float(alive.std[1]) == pytest.approx(0.5)


def test_projection_of_a_single_training_feature_uses_unit_spread():
    p = Projection(2, 2)
    p.fit_normalizer(torch.tensor([[4.0, -1.0]]))
    assert torch.equal(p.std, torch.ones(2)) and torch.equal(p.mean, torch.tensor([4.0, -1.0]))


def test_projection_kinds_and_their_shapes():
    lin = Projection(6, 3)
    assert isinstance(lin.net, torch.nn.Linear) and (lin.net.in_features, lin.net.out_features) == (6, 3)
    mlp = Projection(6, 3, kind="mlp", hidden=5, dropout=0.0)
    a, act, drop, b = mlp.net
    assert (a.in_features, a.out_features, b.in_features, b.out_features) == (6, 5, 5, 3)
    assert isinstance(act, torch.nn.GELU) and drop.p == 0.0
    assert Projection(6, 3, kind="mlp").net[0].out_features == 512 and Projection(6, 3, kind="mlp").net[2].p == 0.1
    assert Projection(6, 3).input_dropout.p == 0.0 and Projection(6, 3, input_dropout=0.3).input_dropout.p == 0.3
    x = torch.randn(4, 6)
    mlp.eval()
    with torch.no_grad():
        assert torch.allclose(mlp(x), b(act(a(x))), atol=1e-6)
    with pytest.raises(ValueError, match="head kind must be 'linear' or 'mlp', not 'conv'"):
        Projection(6, 3, kind="conv")


def test_ensemble_members_come_from_consecutive_seeds_and_normalise():
    ens = HeadEnsemble(lambda: Projection(4, 3), k=2, seed=10)
    for i, m in enumerate(ens.members):
        torch.manual_seed(10 + i)
        ref = Projection(4, 3)
        assert torch.equal(m.net.weight, ref.net.weight)
    assert len(HeadEnsemble(lambda: Projection(4, 3)).members) == 1
    x = torch.randn(5, 4)
    members = ens.members_forward(x)
    assert members.shape == (2, 5, 3) and torch.allclose(members.norm(dim=-1), torch.ones(2, 5), atol=1e-6)
    want = F.normalize(torch.stack([F.normalize(m(x), dim=-1) for m in ens.members]).mean(0), dim=-1)
    assert torch.allclose(ens(x), want, atol=1e-6)


def test_ensemble_fits_every_members_normaliser():
    ens = HeadEnsemble(lambda: Projection(2, 2), k=3)
    ens.fit_normalizer(torch.tensor([[0.0, 2.0], [2.0, 6.0]]))
    for m in ens.members:
        assert torch.allclose(m.mean, torch.tensor([1.0, 4.0]))


def test_cosine_similarity_value_bias_and_clamp():
    a = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    b = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    sim = CosineSimilarity(init_temperature=0.25, bias=-1.5)
    assert float(sim.logit_scale.detach()) == pytest.approx(math.log(4.0))
    assert float(sim.logit_bias.detach()) == -1.5
    cos = a @ b.T
    assert torch.allclose(sim(a, b), 4.0 * cos - 1.5, atol=1e-5)
    assert CosineSimilarity().logit_bias is None
    assert float(CosineSimilarity().scale.detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        sim.logit_scale.fill_(10.0)
    assert float(sim.scale.detach()) == pytest.approx(math.exp(MAX_LOGIT_SCALE)) and MAX_LOGIT_SCALE == math.log(100.0)
    assert torch.allclose(sim.pair(a, b[:2]), (a * b[:2]).sum(-1))
    stacked = torch.stack([a, a.flip(0)])                                 # (..., N, D) inputs
    assert torch.allclose(CosineSimilarity(0.5)(stacked, b)[1], 2.0 * (a.flip(0) @ b.T), atol=1e-5)


def test_label_bridge_is_a_probability_mix_of_normalised_class_texts():
    class_text = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    bridge = LabelBridge(class_text, temperature=2.0)
    assert torch.allclose(bridge.class_text, F.normalize(class_text, dim=-1))
    p = torch.softmax(logits / 2.0, -1)
    want = F.normalize(p @ F.normalize(class_text, dim=-1), dim=-1)
    assert torch.allclose(bridge(logits), want, atol=1e-6)
    assert LabelBridge(class_text).temperature == 1.0


def test_blend_gives_the_weighted_mean_of_the_two_cosines():
    g = torch.Generator().manual_seed(0)
    h1, h2 = F.normalize(torch.randn(2, 4, generator=g), dim=-1)
    b1, b2 = F.normalize(torch.randn(2, 3, generator=g), dim=-1)
    for alpha in (0.0, 0.3, 1.0):
        c = blend(h1, b1, alpha) @ blend(h2, b2, alpha)
        assert float(c) == pytest.approx((1 - alpha) * float(h1 @ h2) + alpha * float(b1 @ b2), abs=1e-6)
    assert blend(h1, b1, 0.3).shape == (7,)
    rows = blend(torch.stack([h1, h2]), torch.stack([b1, b2]), 0.3)      # a batch: joined along the features
    assert rows.shape == (2, 7) and torch.allclose(rows[1], blend(h2, b2, 0.3))


def test_siamese_score_is_tanh_of_the_mlp_of_the_absolute_difference():
    torch.manual_seed(0)
    s = SiameseSimilarity(3, 3, hidden=4, shared=True)
    assert s.score[0].out_features == 2 and s.branch_a[0].out_features == 4
    a, b = torch.randn(2, 3), torch.randn(5, 3)
    with torch.no_grad():
        want = torch.empty(2, 5)
        for i in range(2):
            for j in range(5):
                d = (s.branch_a(a[i]) - s.branch_a(b[j])).abs()
                want[i, j] = torch.tanh(s.score(d))[0]
        assert torch.allclose(s(a, b), want, atol=1e-6)
        assert torch.allclose(s.pair(a, b[:2]), torch.stack([want[0, 0], want[1, 1]]), atol=1e-6)
    default = SiameseSimilarity(3, 3)
    assert default.branch_a[0].out_features == 256 and default.score[0].out_features == 128
    assert default.branch_a is default.branch_b
    two = SiameseSimilarity(3, 5, hidden=4, shared=False)
    assert two.branch_b[0].in_features == 5 and two.branch_a is not two.branch_b
    with pytest.raises(ValueError, match=r"equal widths \(got 3 and 5\)"):
        SiameseSimilarity(3, 5)


def test_defaults_and_layer_structure():
    assert CosineSimilarity().logit_scale.requires_grad                   # learnable unless told otherwise
    torch.manual_seed(0)
    first = Projection(3, 2)
    assert torch.equal(HeadEnsemble(lambda: Projection(3, 2)).members[0].net.weight, first.net.weight)  # seed 0
    s = SiameseSimilarity(3, 5, hidden=4, shared=False)
    for branch in (s.branch_a, s.branch_b):
        assert [type(m) for m in branch] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert [type(m) for m in s.score] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    with pytest.raises(ValueError) as e:
        SiameseSimilarity(3, 5)
    assert str(e.value).endswith("use separate branches or project both sides to one width first")
    a, b = F.normalize(torch.randn(3, 2), dim=-1), F.normalize(torch.randn(3, 2), dim=-1)   # N != D
    assert torch.allclose(CosineSimilarity().pair(a, b), torch.tensor([float(a[i] @ b[i]) for i in range(3)]), atol=1e-6)
