"""Projection heads and similarities.

* ``Projection``: linear or MLP from a tower's width to the shared width. It carries the feature
  standardisation fitted on the training features as buffers, so a saved model needs nothing else.
* ``HeadEnsemble``: K projections from different seeds. For cosine similarity, averaging the K
  normalised outputs is exactly averaging the K score matrices, so an ensemble costs one matmul. Its
  members run batched: one autograd node per layer for all heads (``_StackedLinear``) and one op over
  (K, B, D) for everything else; each member keeps its own parameters, so state_dict keys and saved models are
  those of K separate projections. Dropout masks are drawn in the order the per-member loop draws them: the
  same random numbers, the same results.
* ``CosineSimilarity``: logits = exp(logit_scale) * cos, with logit_scale = log(1/T) learnable and
  clamped at log(100) as in CLIP (the seed MNIST CLIP multiplied by T instead of dividing).
* ``LabelBridge``: a training-free image embedding in the TEXT space (ConSE): the image tower's own
  ImageNet probabilities weight the text embeddings of the 1000 ImageNet class names. Concatenated with
  the learned head (weights sqrt(1-a), sqrt(a)), cosine becomes (1-a)*cos_head + a*cos_bridge.
* ``SiameseSimilarity``: the seed Pretrained_Model_Alignment score |a - b| -> MLP -> tanh, with one
  shared branch (inputs of one width) or two separate branches (towers of different widths).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = math.log(100.0)


class Projection(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear", hidden: int = 512, dropout: float = 0.1,
                 input_dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.input_dropout = nn.Dropout(input_dropout)
        if kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))
        else:
            raise ValueError(f"head kind must be 'linear' or 'mlp', not {kind!r}")

    @torch.no_grad()
    def fit_normalizer(self, feats: torch.Tensor) -> None:
        """Standardise with training statistics. A feature that never varied in training (a ReLU6 unit that is
        always 0) gets std = inf: the head could not learn anything about it, so it must read 0 at test
        time too, not (x - 0) / 1e-6."""
        std = feats.std(0) if len(feats) > 1 else torch.ones(feats.shape[1])
        dead = std <= 1e-4 * std.max().clamp_min(1e-12)
        self.mean.copy_(feats.mean(0))
        self.std.copy_(torch.where(dead, torch.full_like(std, float("inf")), std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.input_dropout((x - self.mean) / self.std))


class HeadEnsemble(nn.Module):
    """K heads; ``members_forward`` gives each member's normalised output (for training K losses)."""

    def __init__(self, make_head, k: int = 1, seed: int = 0):
        super().__init__()
        members = []
        for i in range(k):
            torch.manual_seed(seed + i)
            members.append(make_head())
        self.members = nn.ModuleList(members)

    @torch.no_grad()
    def fit_normalizer(self, feats: torch.Tensor) -> None:
        for m in self.members:
            m.fit_normalizer(feats)

    def members_forward(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, D) normalised outputs. Batched when the members share a layout and mode (always, for heads
        built by ``build_heads``); the per-member loop otherwise, and under autocast (whose casts the batched ops
        would not reproduce). ``members_loop`` is the reference the batched path is tested against."""
        if not _stackable(self.members, x):
            return self.members_loop(x)
        return F.normalize(_stacked_forward(self.members, x, self.standardised), dim=-1)

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` of the members' shared normaliser, remembered for the last ``x``: a full-batch
        run feeds the same cached features at every step, and dividing them anew cost as much as a 1-head step's
        forward GEMM. Recomputed whenever ``x``, its contents or the normaliser change; never kept for an ``x``
        that needs gradients (its graph must be built every step) nor from inside inference mode."""
        first = self.members[0]
        if x.requires_grad or torch.is_inference_mode_enabled() or x.is_inference():
            return (x - first.mean) / first.std          # (inference tensors carry no version counter, nor train)
        key = (x._version, first.mean._version, first.std._version)
        memo = getattr(self, "_memo", None)
        if memo is not None and memo[0] is x and memo[1] == key:
            return memo[2]
        z = (x - first.mean) / first.std
        self._memo = (x, key, z)
        return z

    def train(self, mode: bool = True) -> "HeadEnsemble":
        """Switching mode drops the kept standardisation: a trained model must not hold a copy of its training
        features (hundreds of MB for a full-size class set) through evaluation and serving."""
        self._memo = None
        return super().train(mode)

    def members_loop(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([F.normalize(m(x), dim=-1) for m in self.members])  # (K, B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.members_forward(x).mean(0), dim=-1)


def _layers(p: Projection) -> tuple[list[nn.Linear], list[nn.Dropout]]:
    """A projection's linear layers and its dropouts, in the order its forward applies them."""
    if isinstance(p.net, nn.Linear):
        return [p.net], [p.input_dropout]
    return [p.net[0], p.net[3]], [p.input_dropout, p.net[2]]


def _autocast_on() -> bool:
    return any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda"))


def _stackable(members: nn.ModuleList, x: torch.Tensor) -> bool:
    """Whether ``_stacked_forward`` computes what the per-member loop computes (same layers, same dropout
    settings and modes, biases everywhere, fp32-style math without autocast)."""
    if x.dim() != 2 or _autocast_on() or not all(isinstance(m, Projection) for m in members):
        return False
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():  # exporters cannot trace a custom autograd node
        return False
    lin0, drop0 = _layers(members[0])
    for m in members:
        lin, drop = _layers(m)
        if len(lin) != len(lin0) or any(a.bias is None or a.weight.shape != b.weight.shape for a, b in zip(lin, lin0)):
            return False
        if any((a.p, a.training) != (b.p, b.training) or a.p >= 1 for a, b in zip(drop, drop0)):
            return False
        if len(lin) == 2 and not isinstance(m.net[1], type(members[0].net[1])):
            return False
    return True


def _active(d: nn.Dropout) -> bool:
    return d.training and d.p > 0  # F.dropout draws no random numbers otherwise


def _dropout_noise(members: nn.ModuleList, shapes: list[tuple], like: torch.Tensor) -> list[torch.Tensor | None]:
    """The scaled masks (0 or 1/(1-p)) of every dropout of every member, drawn in the per-member loop's order
    (member 0's input dropout, member 0's hidden dropout, member 1's ...), so the generator yields the same
    numbers: ``x * noise`` is then exactly ``F.dropout(x)`` (on the CPU, F.dropout is bernoulli_, div_, mul;
    elsewhere F.dropout of ones gives the scaled mask of the same draw). One (K, *shape) tensor per dropout."""
    drops = _layers(members[0])[1]
    k = len(members)
    noise = [like.new_empty((k, *shape)) if _active(d) else None for d, shape in zip(drops, shapes)]
    fast = like.device.type == "cpu" and like.dtype == torch.float32 and _uniform_is_bernoulli()
    scratch = {}
    for i in range(k):
        for d, buf in zip(drops, noise):
            if buf is None:
                continue
            if fast:   # the uniforms bernoulli_ would compare with 1-p, from the uniform kernel (about 2x faster)
                u, keep, scale = scratch.get(id(buf)) or scratch.setdefault(id(buf), (
                    torch.empty(buf.shape[1:], dtype=torch.float64), torch.empty(buf.shape[1:], dtype=torch.bool),
                    torch.ones((), dtype=buf.dtype).div_(1 - d.p)))    # what div_ makes of a kept 1
                torch.lt(u.uniform_(), 1 - d.p, out=keep)
                torch.where(keep, scale, scale.new_zeros(()), out=buf[i])
            elif buf.device.type == "cpu":
                buf[i].bernoulli_(1 - d.p)
            else:
                buf[i] = F.dropout(torch.ones_like(buf[i]), d.p, True)
    for d, buf in zip(drops, noise):
        if buf is not None and buf.device.type == "cpu" and not fast:
            buf.div_(1 - d.p)
    return noise


@functools.lru_cache(maxsize=None)
def _uniform_is_bernoulli() -> bool:
    """Whether ``bernoulli_(q)`` on this CPU build is ``uniform_() < q`` in float64 on the same generator, value for
    value and draw for draw. PyTorch's default CPU kernel is exactly that, one element at a time (about twice as
    slow as the uniform kernel); MKL builds on Intel CPUs draw from an MKL stream instead: there this is False and
    bernoulli_ itself is used. Checked once per process, on a private generator."""
    g = torch.Generator().manual_seed(20240601)
    a = torch.empty(4099).bernoulli_(0.37, generator=g)
    state = g.get_state()
    g.manual_seed(20240601)
    b = torch.empty(4099, dtype=torch.float64).uniform_(generator=g) < 0.37
    return torch.equal(a.bool(), b) and torch.equal(state, g.get_state())


class _StackedLinear(torch.autograd.Function):
    """K linears as one autograd node: z (B, I) shared by all members or (K, B, I) one per member -> (K, B, O),
    every head's GEMM written into one output, so what follows (activation, dropout, normalisation, the loss)
    runs once over all heads.

    The K GEMMs are K calls into one buffer, not a bmm over stacked weights: stacking copies every weight matrix
    at every step (20 MB for the caption heads) and on this CPU that costs more than the calls (one autograd node
    of K GEMMs: 91 ms a step against 110 ms for stack + bmm, fwd + bwd of the caption heads); each call is the
    addmm ``nn.Linear`` makes, so the outputs are bit-identical to the per-head loop's. Its own backward gives
    each member's weight gradient as a contiguous (O, I) matrix, as ``nn.Linear`` does."""

    @staticmethod
    def forward(ctx, z, *params):
        k = len(params) // 2
        ws, bs = params[:k], params[k:]
        ctx.save_for_backward(z, *ws)
        shared = z.dim() == 2
        out = z.new_empty(k, z.shape[-2], ws[0].shape[0])
        for i in range(k):
            torch.addmm(bs[i], z if shared else z[i], ws[i].t(), out=out[i])
        return out

    @staticmethod
    def backward(ctx, g):
        z, *ws = ctx.saved_tensors
        k, shared = len(ws), z.dim() == 2
        gw = [g[i].t() @ (z if shared else z[i]) for i in range(k)]
        gz = None
        if ctx.needs_input_grad[0]:
            gz = torch.zeros_like(z) if shared else torch.empty_like(z)
            for i in range(k):
                if shared:
                    gz.addmm_(g[i], ws[i])
                else:
                    torch.mm(g[i], ws[i], out=gz[i])
        return (gz, *gw, *[g[i].sum(0) for i in range(k)])


def _stacked_linear(z: torch.Tensor, layers: list[nn.Linear]) -> torch.Tensor:
    return _StackedLinear.apply(z, *[l.weight for l in layers], *[l.bias for l in layers])


def _stacked_forward(members: nn.ModuleList, x: torch.Tensor, standardise) -> torch.Tensor:
    """Every member's un-normalised output (K, B, O), the loop's arithmetic batched over members.
    ``standardise(x)`` computes the shared normaliser's ``(x - mean) / std`` (HeadEnsemble remembers it)."""
    first = members[0]
    lin = [_layers(m)[0] for m in members]
    shared = all(torch.equal(m.mean, first.mean) and torch.equal(m.std, first.std) for m in members[1:])
    if shared:                                           # one standardisation for all (fit_normalizer gives this)
        z = standardise(x)
    else:
        z = (x - torch.stack([m.mean for m in members]).unsqueeze(1)) / torch.stack([m.std for m in members]).unsqueeze(1)
    b = x.shape[0]
    shapes = [(b, x.shape[1])] + ([(b, lin[0][0].out_features)] if len(lin[0]) == 2 else [])
    noise = _dropout_noise(members, shapes, z)
    if noise[0] is not None:
        z = z * noise[0]                                 # (K, B, I) from here
    h = _stacked_linear(z, [l[0] for l in lin])
    if len(lin[0]) == 1:
        return h
    h = first.net[1](h)                                  # the activation (GELU)
    if noise[1] is not None:
        h = h * noise[1]
    return _stacked_linear(h, [l[1] for l in lin])


class CosineSimilarity(nn.Module):
    def __init__(self, init_temperature: float = 0.07, learnable: bool = True, bias: float | None = None):
        super().__init__()
        scale = torch.tensor(math.log(1.0 / init_temperature))
        self.logit_scale = nn.Parameter(scale, requires_grad=learnable)
        self.logit_bias = nn.Parameter(torch.tensor(float(bias))) if bias is not None else None

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a: (..., N, D), b: (M, D), both L2-normalised -> logits (..., N, M) = cos / T (+ bias)."""
        logits = self.scale * (a @ b.transpose(-1, -2))
        return logits + self.logit_bias if self.logit_bias is not None else logits

    def pair(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise cosines of matching pairs a[i], b[i] -> (N,): the pair loss pushes them to +1 / -1 directly,
        so no temperature (as SiameseSimilarity.pair, whose scores are tanh-bounded)."""
        return (a * b).sum(-1)


class LabelBridge(nn.Module):
    """ConSE embedding: softmax(classifier logits / T) @ normalised class-name text embeddings."""

    def __init__(self, class_text: torch.Tensor, temperature: float = 1.0):
        super().__init__()
        self.register_buffer("class_text", F.normalize(class_text.float(), dim=-1))
        self.temperature = float(temperature)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        return F.normalize(probs @ self.class_text, dim=-1)


def blend(head: torch.Tensor, bridge: torch.Tensor, alpha: float) -> torch.Tensor:
    """Concatenate two unit vectors so that the cosine of blends is (1-alpha)*cos_head + alpha*cos_bridge."""
    return torch.cat([head * (1 - alpha) ** 0.5, bridge * alpha ** 0.5], dim=-1)


class SiameseSimilarity(nn.Module):
    """score(a, b) = tanh(MLP(|f(a) - g(b)|)), f = g when ``shared``."""

    def __init__(self, dim_a: int, dim_b: int, hidden: int = 256, shared: bool = True):
        super().__init__()
        if shared and dim_a != dim_b:
            raise ValueError(f"a shared Siamese branch needs equal widths (got {dim_a} and {dim_b}); "
                             "use separate branches or project both sides to one width first")
        self.branch_a = nn.Sequential(nn.Linear(dim_a, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.branch_b = self.branch_a if shared else nn.Sequential(nn.Linear(dim_b, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.score = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, 1))

    def pair(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise scores of matching pairs a[i], b[i] -> (N,)."""
        return torch.tanh(self.score((self.branch_a(a) - self.branch_b(b)).abs())).squeeze(-1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """All pairs: a (..., N, Da), b (M, Db) -> (..., N, M)."""
        fa, fb = self.branch_a(a), self.branch_b(b)
        diff = (fa.unsqueeze(-2) - fb).abs()
        return torch.tanh(self.score(diff)).squeeze(-1)
