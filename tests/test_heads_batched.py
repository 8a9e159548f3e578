"""The batched ensemble (one matmul per layer for all heads) against the per-head loop it replaced: same outputs,
same gradients, same dropout masks and random state, same losses; state_dict keys of separate heads."""
import pytest
import torch
import torch.nn.functional as F

from clipforge.config import HeadConfig, LossConfig
from clipforge.losses.contrastive import CaptionBatch, ContrastiveObjective
from clipforge.losses.functional import members_clip_loss
from clipforge.model.heads import HeadEnsemble, Projection, _stackable
from clipforge.losses.functional import clip_loss, multi_positive_infonce, multilabel_loss, pair_loss, siglip_loss
from clipforge.model.dual_encoder import DualEncoder
from clipforge.losses.classes import ClassBatchData, class_objective
from clipforge.train.trainer import _finite, adamw
from objutil import FeatTower

CASES = [("mlp", 0.5, 0.5), ("mlp", 0.0, 0.1), ("mlp", 0.0, 0.0), ("linear", 0.0, 0.0), ("linear", 0.3, 0.0)]


def _ensemble(kind, p_in, p_hidden, k=3, din=24, dout=8, seed=5):
    ens = HeadEnsemble(lambda: Projection(din, dout, kind, 16, p_hidden, p_in), k=k, seed=seed)
    ens.fit_normalizer(torch.randn(40, din) * 3 + 1)
    return ens


def _run(ens, fn, x, seed=11):
    ens.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = fn(x)
    (out.pow(3).sum() + out[..., 0].sum()).backward()
    return out.detach(), [p.grad.clone() for p in ens.parameters()], torch.rand(4)


@pytest.mark.parametrize("kind,p_in,p_hidden", CASES)
@pytest.mark.parametrize("training", [True, False])
def test_batched_ensemble_equals_the_per_head_loop(kind, p_in, p_hidden, training):
    ens = _ensemble(kind, p_in, p_hidden).train(training)
    x = torch.randn(20, 24)
    assert _stackable(ens.members, x)
    out_loop, grads_loop, after_loop = _run(ens, ens.members_loop, x)
    out, grads, after = _run(ens, ens.members_forward, x)
    assert out.shape == (3, 20, 8)
    assert torch.allclose(out, out_loop, atol=1e-6, rtol=0)
    for g, ref in zip(grads, grads_loop):
        assert g.is_contiguous() and torch.allclose(g, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(after, after_loop)          # the batched path drew exactly as many random numbers


def test_batched_ensemble_does_not_call_the_members_one_by_one(monkeypatch):
    ens = _ensemble("mlp", 0.5, 0.5).train()
    x = torch.randn(6, 24)
    want = ens.members_loop(x).shape
    monkeypatch.setattr(Projection, "forward", lambda self, x: (_ for _ in ()).throw(AssertionError("loop ran")))
    assert ens.members_forward(x).shape == want


def test_dropout_masks_differ_between_heads_and_match_the_loop():
    """Each head gets its own mask (not one mask broadcast to all), the one the loop would have drawn."""
    ens = _ensemble("linear", 0.5, 0.0, k=2).train()
    with torch.no_grad():
        for m in ens.members:
            m.net.weight.copy_(ens.members[0].net.weight)
            m.net.bias.copy_(ens.members[0].net.bias)
    x = torch.randn(30, 24)
    torch.manual_seed(3)
    out = ens.members_forward(x)
    assert not torch.allclose(out[0], out[1])
    torch.manual_seed(3)
    assert torch.allclose(out, ens.members_loop(x), atol=1e-6, rtol=0)


def test_members_with_their_own_normalisers_and_the_loop_fallbacks():
    ens = _ensemble("mlp", 0.2, 0.2).train()
    with torch.no_grad():
        ens.members[1].mean.add_(0.7)
        ens.members[2].std.mul_(2.0)
    x = torch.randn(9, 24)
    torch.manual_seed(0)
    a = ens.members_forward(x)
    torch.manual_seed(0)
    assert torch.allclose(a, ens.members_loop(x), atol=1e-6, rtol=0)
    ens.members[2].input_dropout.p = 0.3           # members that differ: the loop, not the batched path
    assert not _stackable(ens.members, x)
    assert not _stackable(_ensemble("mlp", 0.0, 0.0).members, torch.randn(2, 3, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _stackable(_ensemble("mlp", 0.0, 0.0).members, x)


def test_state_dict_keys_are_those_of_separate_heads():
    """Saved models from before the batched ensemble load unchanged: the parameters still live in the members."""
    ens = _ensemble("mlp", 0.5, 0.5, k=2)
    assert list(ens.state_dict()) == [f"members.{k}.{n}" for k in range(2) for n in
                                      ("mean", "std", "net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias")]
    assert list(_ensemble("linear", 0, 0, k=1).state_dict()) == ["members.0.mean", "members.0.std",
                                                                 "members.0.net.weight", "members.0.net.bias"]


def _caption_model(k=3, similarity="cosine"):
    torch.manual_seed(0)
    head = HeadConfig(kind="mlp", hidden=16, dropout=0.3, input_dropout=0.3, embed_dim=8, init_bias=None,
                      similarity=similarity, siamese_hidden=8)
    model = DualEncoder(FeatTower(12, "image"), FeatTower(8, "text"), head, ensemble=k, seed=2)
    model.image_head.fit_normalizer(torch.randn(30, 12))
    return model


@pytest.mark.parametrize("kind,reduction,similarity", [("clip", "mean", "cosine"), ("clip", "sum", "cosine"),
                                                       ("siglip", "mean", "cosine"), ("pair", "mean", "cosine"),
                                                       ("pair", "mean", "siamese")])
def test_contrastive_loss_equals_the_per_head_loop(kind, reduction, similarity):
    model = _caption_model(similarity=similarity).train()
    obj = ContrastiveObjective(model, kind, reduction)
    owners = torch.tensor([0, 1, 2, 2, 3, 4, 5, 6])
    batch = CaptionBatch(torch.randn(8, 12), torch.randn(8, 8), owners)
    torch.manual_seed(4)
    got = obj(batch)
    torch.manual_seed(4)
    img, txt = model.image_head.members_loop(batch.images), model.embed_text_features(batch.texts, with_bridge=False)
    pos = (owners[:, None] == owners[None, :]).float()
    if kind == "pair":
        neg = torch.multinomial(1 - pos, 1).squeeze(1)
        labels = torch.cat([torch.ones(8), -torch.ones(8)])
        want = torch.stack([pair_loss(model.similarity.pair(torch.cat([m, m]), torch.cat([txt, txt[neg]])), labels)
                            for m in img]).mean()
    elif kind == "clip":
        want = torch.stack([clip_loss(model.similarity(m, txt), pos) for m in img]).mean() * (2 if reduction == "sum" else 1)
    else:
        want = torch.stack([siglip_loss(model.similarity(m, txt), pos) for m in img]).mean()
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-6)


def test_members_clip_loss_is_the_mean_of_clip_losses():
    logits, pos = torch.randn(4, 7, 7) * 3, (torch.rand(7, 7) < 0.3).float() + torch.eye(7)
    want = torch.stack([clip_loss(l, pos.clamp(max=1)) for l in logits]).mean()
    assert torch.allclose(members_clip_loss(logits, pos.clamp(max=1)), want, atol=1e-6)


@pytest.mark.parametrize("kind", ["multilabel", "class-softmax", "batch-clip", "pair"])
def test_class_objectives_equal_the_per_head_sum(kind):
    torch.manual_seed(0)
    model = DualEncoder(FeatTower(10, "image"), FeatTower(6, "text"), HeadConfig(embed_dim=6), ensemble=3).train()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    M = torch.eye(3).repeat_interleave(2, dim=1)
    data = ClassBatchData(torch.randn(8, 10), labels, torch.randn(6, 6), M, [0, 1, 2])
    model.image_head.fit_normalizer(data.image_feats)
    idx = torch.tensor([5, 0, 3, 1, 7, 2])
    torch.manual_seed(9)
    got = class_objective(model, data, LossConfig(kind=kind))(idx)
    torch.manual_seed(9)
    t = model.embed_text_features(data.text_feats)
    z = model.image_head.members_loop(data.image_feats[idx])
    y = labels[idx]
    if kind == "multilabel":
        want = sum(multilabel_loss(model.logits(m, t), M[y]) for m in z)
    elif kind == "class-softmax":
        proto = F.normalize(M @ t, dim=-1)
        want = sum(multi_positive_infonce(model.logits(m, proto), F.one_hot(y, 3).float()) for m in z)
    elif kind == "batch-clip":
        cap = torch.multinomial(M[y], 1).squeeze(1)
        want = sum(clip_loss(model.logits(m, t[cap]), (y[:, None] == y[None, :]).float()) for m in z)
    else:
        pos = torch.multinomial(M[y], 1).squeeze(1)
        neg = torch.multinomial((1 - M[y]), 1).squeeze(1)
        lab = torch.cat([torch.ones(6), -torch.ones(6)])
        want = sum(pair_loss(model.similarity.pair(torch.cat([m, m]), torch.cat([t[pos], t[neg]])), lab) for m in z)
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-6)


def test_full_batch_uses_the_features_without_a_copy_and_a_subset_gathers():
    model = DualEncoder(FeatTower(3, "image"), FeatTower(6, "text"), HeadConfig(embed_dim=6), ensemble=2)
    feats = torch.randn(5, 3)
    data = ClassBatchData(feats, torch.tensor([0, 0, 1, 1, 0]), torch.randn(2, 6), torch.eye(2), [0, 1])
    images = class_objective(model, data, LossConfig()).inputs_of
    assert images(torch.arange(5)) is feats
    assert torch.equal(images(torch.tensor([4, 0, 1, 2, 3])), feats[[4, 0, 1, 2, 3]])


def test_fused_adamw_follows_the_loop_adamw():
    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(32), torch.tensor(1.5)]
    runs = []
    for make in (lambda g: torch.optim.AdamW(g), adamw):
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = make([{"params": ps[:2], "lr": 1e-2, "weight_decay": 0.05}, {"params": ps[2:], "lr": 1e-3, "weight_decay": 0.0}])
        gen = torch.Generator().manual_seed(1)
        for _ in range(30):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        runs.append(ps)
    assert runs[1][0].grad is not None and torch.optim.AdamW is type(adamw([{"params": runs[1]}]))
    for a, b in zip(*runs):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
        assert not torch.equal(a, start[0] if a.dim() == 2 else a.detach() * 0 + 1e9)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_the_finite_check_finds_any_bad_entry(bad):
    w = torch.randn(7, 5)
    assert _finite(w) and _finite(torch.tensor(0.5)) and _finite(torch.empty(0))
    w[6, 4] = bad
    assert not _finite(w)
    assert not _finite(torch.tensor(bad))


def test_counted_flops_are_the_matmuls_that_run():
    """bench train-cache's FLOPs: forward + backward matmuls of the heads and the similarity, nothing for the
    cached input features' gradient (they have none)."""
    from benchmarks.flops import count_flops
    k, b, din, h, o = 3, 10, 12, 16, 8
    model = _caption_model(k).train()
    obj = ContrastiveObjective(model, "clip")
    batch = CaptionBatch(torch.randn(b, din), torch.randn(b, o), torch.arange(b))
    flops = count_flops(lambda: obj(batch).backward())
    mm = lambda m, n, kk: 2 * m * n * kk                           # noqa: E731
    per_head = (mm(b, din, h) + mm(h, b, din)                      # layer 1: forward, weight gradient
                + mm(b, h, o) + mm(o, b, h) + mm(b, o, h)          # layer 2: forward, weight and input gradients
                + mm(b, o, b) + mm(b, b, o))                       # similarity: forward, image-side gradient
    assert flops == k * per_head


def test_fast_dropout_masks_are_bernoullis_masks(monkeypatch):
    """Where the uniform kernel reproduces bernoulli_ (PyTorch's default CPU kernel), the masks it gives are
    bernoulli_'s, bit for bit, and leave the generator where bernoulli_ would."""
    import clipforge.model.heads as heads
    if not heads._uniform_is_bernoulli():
        pytest.skip("this build's bernoulli_ draws from MKL: the fast path is off")
    ens = _ensemble("mlp", 0.3, 0.5).train()
    x = torch.randn(50, 24)
    torch.manual_seed(8)
    fast = heads._dropout_noise(ens.members, [(50, 24), (50, 16)], x)
    after_fast = torch.rand(3)
    monkeypatch.setattr(heads, "_uniform_is_bernoulli", lambda: False)
    torch.manual_seed(8)
    slow = heads._dropout_noise(ens.members, [(50, 24), (50, 16)], x)
    assert all(torch.equal(a, b) for a, b in zip(fast, slow)) and torch.equal(after_fast, torch.rand(3))
    assert set(fast[0].unique().tolist()) == {0.0, 1 / 0.7} or torch.allclose(fast[0].max(), torch.tensor(1 / 0.7))


def test_remembered_standardisation_follows_the_features_and_the_normaliser():
    """The standardised features are kept between full-batch steps; a change to the features (in place), a new
    normaliser, another tensor, or features that need gradients must never get a stale copy."""
    ens = _ensemble("linear", 0.0, 0.0).train()
    x = torch.randn(12, 24)
    first = ens.members_forward(x)
    assert torch.equal(ens.members_forward(x), first)                              # the remembered copy
    assert torch.allclose(first, ens.members_loop(x), atol=1e-6, rtol=0)
    with torch.no_grad():
        x[0].add_(5.0)                                                             # in place: a new version
    assert torch.allclose(ens.members_forward(x), ens.members_loop(x), atol=1e-6, rtol=0)
    ens.fit_normalizer(torch.randn(40, 24) * 0.5 - 2)                              # a new normaliser
    assert torch.allclose(ens.members_forward(x), ens.members_loop(x), atol=1e-6, rtol=0)
    y = x.clone()
    assert torch.allclose(ens.members_forward(y), ens.members_loop(y), atol=1e-6, rtol=0)
    z1 = ens.standardised(x)
    assert ens.standardised(x) is z1                                               # kept: one division, not one per step
    g = x.clone().requires_grad_(True)
    for _ in range(2):                                                             # a fresh graph every step
        ens.members_forward(g).sum().backward()
    assert g.grad is not None and g.grad.abs().sum() > 0                           # the graph reaches the input
    with torch.inference_mode():
        z = torch.randn(3, 24)
        assert torch.allclose(ens.members_forward(z), ens.members_loop(z), atol=1e-6, rtol=0)
    assert torch.allclose(ens.members_forward(z), ens.members_loop(z), atol=1e-6, rtol=0)  # made in inference mode


def test_members_clip_loss_with_more_texts_than_images_and_several_positives_per_row():
    torch.manual_seed(2)
    logits = torch.randn(3, 5, 8) * 2
    pos = torch.zeros(5, 8)
    pos[torch.arange(5), torch.arange(5)] = 1
    pos[0, 6] = pos[1, 7] = pos[3, 6] = 1                   # rows with 2 positives, columns with 2 owners
    want = torch.stack([clip_loss(l, pos) for l in logits]).mean()
    assert torch.allclose(members_clip_loss(logits, pos), want, atol=1e-6)
