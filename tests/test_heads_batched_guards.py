"""The batched head ensemble's guards, gradients and dropout noise, piece by piece (issue 16: each check here is
one a plausible one-line bug in ``_stackable``, ``_dropout_noise``, ``_stacked_forward`` or ``_StackedLinear``
would fail)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import clipforge.model.heads as heads
from clipforge.model.heads import HeadEnsemble, Projection, _StackedLinear, _dropout_noise, _stackable


def _ens(kind="mlp", p_in=0.0, p_hidden=0.0, k=3, din=12, dout=5, hidden=7, seed=3, dims=None):
    dims = dims or [dout] * k
    it = iter(dims)
    ens = HeadEnsemble(lambda: Projection(din, next(it), kind, hidden, p_hidden, p_in), k=k, seed=seed)
    ens.fit_normalizer(torch.randn(30, din) * 2 + 0.5)
    return ens


X = torch.randn(6, 12)


# ---- _stackable: every reason to take the per-member loop ----------------------------------------------------

def test_stackable_for_identical_members():
    assert _stackable(_ens("mlp").members, X)
    assert _stackable(_ens("linear").members, X)


def test_not_stackable_for_a_non_2d_input_or_a_non_projection_member():
    assert not _stackable(_ens("linear").members, torch.randn(2, 6, 12))
    assert not _stackable(_ens("linear").members, torch.randn(12))
    mixed = nn.ModuleList([Projection(12, 5, "linear"), nn.Linear(12, 5)])
    assert not _stackable(mixed, X)


def test_not_stackable_while_tracing_or_exporting(monkeypatch):
    members = _ens("mlp").members
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    assert not _stackable(members, X)
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: False)
    assert _stackable(members, X)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert not _stackable(members, X)


def test_not_stackable_under_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _stackable(_ens("linear").members, X)


def test_not_stackable_for_different_layer_shapes():
    assert not _stackable(_ens("linear", k=2, dims=[5, 4]).members, X)      # same depth, other output width
    assert not _stackable(_ens("mlp", k=2, dims=[5, 4]).members, X)
    mixed = nn.ModuleList([Projection(12, 5, "mlp", 7), Projection(12, 5, "linear")])
    assert not _stackable(mixed, X)                                           # other depth
    assert not _stackable(nn.ModuleList([Projection(12, 5, "mlp", 7), Projection(12, 5, "mlp", 8)]), X)


def test_not_stackable_without_a_bias():
    for kind in ("linear", "mlp"):
        ens = _ens(kind, k=2)
        last = ens.members[1].net if kind == "linear" else ens.members[1].net[3]
        last.bias = None                                                      # same shapes, no bias
        assert not _stackable(ens.members, X)


def test_not_stackable_for_different_dropout_p_or_mode_or_p_one():
    ens = _ens("mlp", 0.1, 0.2)
    ens.members[1].net[2].p = 0.3
    assert not _stackable(ens.members, X)
    ens = _ens("mlp", 0.1, 0.2)
    ens.members[2].input_dropout.train(False)
    ens.members[0].input_dropout.train(True)
    assert not _stackable(ens.members, X)
    for p in (1.0, 1.5):                                                      # F.dropout(p=1) zeroes; >1 is an error
        ens = _ens("linear", 0.0)
        for m in ens.members:
            m.input_dropout.p = p
        assert not _stackable(ens.members, X)


def test_not_stackable_for_different_activations():
    ens = _ens("mlp", k=2)
    ens.members[1].net[1] = nn.ReLU()
    assert not _stackable(ens.members, X)
    x = torch.randn(5, 12)                          # and the ensemble then computes each member's own activation
    assert torch.allclose(ens.members_forward(x), ens.members_loop(x), atol=1e-6, rtol=0)


# ---- members_loop (the reference) ----------------------------------------------------------------------------

def test_members_loop_normalises_the_last_axis_of_any_input():
    ens = _ens("mlp")
    x3 = torch.randn(4, 6, 12)                      # not stackable: the loop; its rows must be unit vectors
    out = ens.members_forward(x3)
    assert out.shape == (3, 4, 6, 5)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3, 4, 6), atol=1e-5)
    ref = torch.stack([F.normalize(m(x3), dim=-1) for m in ens.members])
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)


# ---- _stacked_forward ----------------------------------------------------------------------------------------

def test_two_members_with_their_own_normalisers():
    for kind in ("linear", "mlp"):
        ens = _ens(kind, k=2)
        with torch.no_grad():
            ens.members[1].mean.add_(0.9)
            ens.members[1].std.mul_(1.7)
        assert torch.allclose(ens.members_forward(X), ens.members_loop(X), atol=1e-6, rtol=0)


def test_shared_normaliser_is_applied_once_to_a_2d_input(monkeypatch):
    """Members with one normaliser (what fit_normalizer gives) share one (B, I) standardised input, not K copies."""
    seen = []
    real = heads._stacked_linear
    monkeypatch.setattr(heads, "_stacked_linear", lambda z, layers: seen.append(z.dim()) or real(z, layers))
    ens = _ens("linear")
    ens.members_forward(X)
    assert seen == [2]
    with torch.no_grad():
        ens.members[2].mean.add_(1.0)
    seen.clear()
    ens.members_forward(X)
    assert seen == [3]


# ---- _StackedLinear: its own backward against finite differences and the loop --------------------------------

@pytest.mark.parametrize("shared", [True, False])
def test_stacked_linear_gradcheck_float64(shared):
    torch.manual_seed(0)
    k, b, i, o = 3, 4, 5, 2
    z = torch.randn(b, i, dtype=torch.float64) if shared else torch.randn(k, b, i, dtype=torch.float64)
    z.requires_grad_(True)
    ws = [torch.randn(o, i, dtype=torch.float64, requires_grad=True) for _ in range(k)]
    bs = [torch.randn(o, dtype=torch.float64, requires_grad=True) for _ in range(k)]
    assert torch.autograd.gradcheck(lambda z, *p: _StackedLinear.apply(z, *p), (z, *ws, *bs))


@pytest.mark.parametrize("shared", [True, False])
def test_stacked_linear_gradients_equal_separate_linears(shared):
    torch.manual_seed(1)
    k, b, i, o = 3, 4, 6, 5                          # non-square everywhere so a transposed gradient cannot fit
    z = torch.randn(b, i) if shared else torch.randn(k, b, i)
    ws = [torch.randn(o, i) for _ in range(k)]
    bs = [torch.randn(o) for _ in range(k)]
    g = torch.randn(k, b, o)

    def grads(fn):
        zz = z.clone().requires_grad_(True)
        pw = [w.clone().requires_grad_(True) for w in ws]
        pb = [c.clone().requires_grad_(True) for c in bs]
        out = fn(zz, pw, pb)
        (out * g).sum().backward()
        return out.detach(), zz.grad, [w.grad for w in pw], [c.grad for c in pb]

    a = grads(lambda zz, pw, pb: _StackedLinear.apply(zz, *pw, *pb))
    r = grads(lambda zz, pw, pb: torch.stack([F.linear(zz if shared else zz[n], pw[n], pb[n]) for n in range(k)]))
    assert torch.allclose(a[0], r[0], atol=1e-5)
    assert a[1].shape == z.shape and torch.allclose(a[1], r[1], atol=1e-5)
    for x, y in zip(a[2] + a[3], r[2] + r[3]):
        assert x.shape == y.shape and torch.allclose(x, y, atol=1e-5)
    assert all(w.is_contiguous() for w in a[2])


def test_stacked_linear_without_an_input_gradient():
    z = torch.randn(4, 6)                            # a leaf that needs no gradient: only the parameters get one
    ws = [torch.randn(5, 6, requires_grad=True) for _ in range(2)]
    bs = [torch.randn(5, requires_grad=True) for _ in range(2)]
    _StackedLinear.apply(z, *ws, *bs).sum().backward()
    assert z.grad is None and all(w.grad is not None for w in ws)
    assert torch.allclose(ws[0].grad, torch.ones(4, 5).t() @ z)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_input_gradient_of_the_batched_ensemble_equals_the_loop(kind):
    ens = _ens(kind)
    g = torch.randn(3, 6, 5)
    out = []
    for fn in (ens.members_forward, ens.members_loop):
        x = X.clone().requires_grad_(True)
        ens.zero_grad(set_to_none=True)
        (fn(x) * g).sum().backward()
        out.append((x.grad, [p.grad.clone() for p in ens.parameters()]))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-5)
    for a, b in zip(out[0][1], out[1][1]):
        assert torch.allclose(a, b, atol=1e-5)


def test_gradients_through_the_batched_path_match_finite_differences_in_float64():
    ens = _ens("mlp").double()
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    assert _stackable(ens.members, x)
    assert torch.autograd.gradcheck(lambda x: heads._stacked_forward(ens.members, x, ens.standardised), (x,))


# ---- _dropout_noise --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fast", [True, False])
def test_dropout_noise_is_a_scaled_mask_per_member(monkeypatch, fast):
    real = heads._uniform_is_bernoulli()
    monkeypatch.setattr(heads, "_uniform_is_bernoulli", lambda: fast)
    ens = _ens("mlp", 0.25, 0.5, k=4).train()
    like = torch.empty(0)
    torch.manual_seed(7)
    noise = _dropout_noise(ens.members, [(200, 12), (200, 7)], like)
    assert [n.shape for n in noise] == [(4, 200, 12), (4, 200, 7)]
    for n, p in zip(noise, (0.25, 0.5)):
        assert set(n.unique().tolist()) == {0.0, torch.ones(()).div_(1 - p).item()}
        kept = (n > 0).float().mean().item()
        assert abs(kept - (1 - p)) < 0.05
        assert not torch.equal(n[0], n[1])          # each member draws its own mask
    torch.manual_seed(7)                            # in the loop's order, from the same generator state
    ref = []
    for m in ens.members:
        ref.append((F.dropout(torch.ones(200, 12), 0.25, True), F.dropout(torch.ones(200, 7), 0.5, True)))
    if fast and not real:
        return                                      # an MKL build: the uniform kernel is not bernoulli_'s draw
    for n_i in range(4):
        assert torch.equal(noise[0][n_i], ref[n_i][0]) and torch.equal(noise[1][n_i], ref[n_i][1])


def test_dropout_noise_none_where_no_dropout_is_active():
    ens = _ens("mlp", 0.0, 0.5).train()
    noise = _dropout_noise(ens.members, [(3, 12), (3, 7)], torch.empty(0))
    assert noise[0] is None and noise[1].shape == (3, 3, 7)
    ens.eval()
    assert _dropout_noise(ens.members, [(3, 12), (3, 7)], torch.empty(0)) == [None, None]


def test_dropout_noise_off_the_cpu_is_f_dropout_of_ones(monkeypatch):
    """Off the CPU the mask of each member and dropout is F.dropout(ones, p, training=True), in the loop's order
    (a meta tensor stands for the accelerator: the branch is chosen by device type)."""
    calls = []
    real = F.dropout

    def spy(input, p=0.5, training=True, inplace=False):
        assert isinstance(input, torch.Tensor)
        calls.append((tuple(input.shape), input.device.type, p, training))
        return real(input, p, training, inplace)

    monkeypatch.setattr(F, "dropout", spy)
    ens = _ens("mlp", 0.25, 0.5, k=2).train()
    noise = _dropout_noise(ens.members, [(3, 12), (3, 7)], torch.empty(0, device="meta"))
    assert calls == [((3, 12), "meta", 0.25, True), ((3, 7), "meta", 0.5, True)] * 2
    assert [n.shape for n in noise] == [(2, 3, 12), (2, 3, 7)]
    assert all(n.device.type == "meta" for n in noise)


def test_stacked_linear_input_gradient_with_frozen_weights():
    """Frozen heads still pass a gradient to their input (the input's need, not the weights', decides)."""
    for z in (torch.randn(4, 6), torch.randn(2, 4, 6)):
        z.requires_grad_(True)
        ws, bs = [torch.randn(5, 6) for _ in range(2)], [torch.randn(5) for _ in range(2)]
        _StackedLinear.apply(z, *ws, *bs).sum().backward()
        ref = torch.ones(4, 5) @ (ws[0] + ws[1]) if z.dim() == 2 else torch.ones(4, 5) @ ws[0]
        assert z.grad is not None
        assert torch.allclose(z.grad if z.dim() == 2 else z.grad[0], ref, atol=1e-5)


def test_float32_cpu_masks_come_from_the_uniform_kernel(monkeypatch):
    """Where the uniform kernel is bernoulli_'s draw (``_uniform_is_bernoulli``), float32 masks on the CPU take it
    (about 2x faster) and never call bernoulli_; other dtypes call bernoulli_."""
    real, calls = torch.Tensor.bernoulli_, []
    monkeypatch.setattr(heads, "_uniform_is_bernoulli", lambda: True)
    monkeypatch.setattr(torch.Tensor, "bernoulli_", lambda self, *a, **kw: calls.append(self.dtype) or real(self, *a, **kw))
    ens = _ens("mlp", 0.25, 0.5, k=2).train()
    noise = _dropout_noise(ens.members, [(3, 12), (3, 7)], torch.empty(0))
    assert calls == [] and noise[0].dtype == torch.float32
    _dropout_noise(ens.members, [(3, 12), (3, 7)], torch.empty(0, dtype=torch.float64))
    assert calls == [torch.float64] * 4
