"""Projection heads and similarities.

* ``Projection``: linear or MLP from a tower's width to the shared width. It carries the feature
  standardisation fitted on the training features as buffers, so a saved model needs nothing else.
* ``HeadEnsemble``: K projections from different seeds. For cosine similarity, averaging the K
  normalised outputs is exactly averaging the K score matrices, so an ensemble costs one matmul.
* ``CosineSimilarity``: logits = exp(logit_scale) * cos, with logit_scale = log(1/T) learnable and
  clamped at log(100) as in CLIP (the seed MNIST CLIP multiplied by T instead of dividing).
* ``LabelBridge``: a training-free image embedding in the TEXT space (ConSE): the image tower's own
  ImageNet probabilities weight the text embeddings of the 1000 ImageNet class names. Concatenated with
  the learned head (weights sqrt(1-a), sqrt(a)), cosine becomes (1-a)*cos_head + a*cos_bridge.
* ``SiameseSimilarity``: the seed Pretrained_Model_Alignment score |a - b| -> MLP -> tanh, with one
  shared branch (inputs of one width) or two separate branches (towers of different widths).
"""
from __future__ import annotations

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
        return torch.stack([F.normalize(m(x), dim=-1) for m in self.members])  # (K, B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.members_forward(x).mean(0), dim=-1)


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
