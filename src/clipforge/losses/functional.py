"""Objectives, each a small pure function of logits (or scores) and targets.

Multi-positive targets matter: with class-level text, two images of one class in a batch share a
positive, and a loss that treats them as each other's negatives (the seed MNIST CLIP's arange
targets) punishes the right answer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def multi_positive_infonce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax over columns, cross-entropy against the normalised 0/1 ``targets`` (rows with >=1 positive)."""
    t = targets / targets.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(t * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def clip_loss(logits_per_image: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE, the mean of image->text and text->image. ``positives`` (N, M) allows several."""
    if positives is None:
        positives = torch.eye(*logits_per_image.shape, device=logits_per_image.device)
    return 0.5 * (multi_positive_infonce(logits_per_image, positives)
                  + multi_positive_infonce(logits_per_image.T, positives.T))


def members_clip_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """The mean over K heads of ``clip_loss(logits[k], positives)`` for (K, N, M) logits, in batched ops: each
    direction's log-softmax runs once over all heads (the text->image one along dim -2, no transposed copy)."""
    rows = positives / positives.sum(-1, keepdim=True).clamp_min(1e-12)
    cols = positives / positives.sum(-2, keepdim=True).clamp_min(1e-12)
    i2t = -(rows * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    t2i = -(cols * F.log_softmax(logits, dim=-2)).sum(-2).mean()
    return 0.5 * (i2t + t2i)


def siglip_loss(logits: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP: every pair an independent binary problem; summed over texts, averaged over images."""
    if positives is None:
        positives = torch.eye(*logits.shape, device=logits.device)
    signs = 2 * positives - 1
    return -F.logsigmoid(signs * logits).sum(-1).mean()


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over image x description pairs (descriptions shared by classes allowed)."""
    return F.binary_cross_entropy_with_logits(logits, targets.expand_as(logits))


def pair_loss(scores: torch.Tensor, labels: torch.Tensor, variant: str = "l1", margin: float = 0.2) -> torch.Tensor:
    """The seed's pair objective: scores in [-1, 1] of (image, description) pairs, labels +1 / -1."""
    if variant == "l1":
        return (scores - labels).abs().mean()
    if variant == "bce":
        return F.binary_cross_entropy(((scores + 1) / 2).clamp(1e-6, 1 - 1e-6), (labels + 1) / 2)
    if variant == "margin":
        return F.relu(margin - labels * scores).mean()
    raise ValueError(f"pair loss variant must be l1, bce or margin, not {variant!r}")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    raise ValueError(f"distillation loss must be mse or cosine, not {kind!r}")


def structure_loss(reference: torch.Tensor, embedded: torch.Tensor, temperature: float = 0.1,
                   levels: int = 1) -> torch.Tensor:
    """The STRUCTURE regulariser ("With Limited Data for Multimodal Alignment, Let the STRUCTURE Guide You",
    NeurIPS 2025): keep each sample's neighbourhood from the frozen tower in the learned space. Each row of the
    batch gets a neighbour distribution, softmax over its cosine similarities / ``temperature`` with itself
    left out, once from ``reference`` (B, D0) and once from ``embedded`` (B, D) or (K, B, D) per head; the loss is
    their Jensen-Shannon divergence, averaged over rows (and heads). ``levels`` > 1 also compares 2-, 3-, ...
    step neighbourhoods (powers of the row-stochastic matrices), the paper's hierarchy. With little paired data a
    head can fit the pairs by folding the space; this term makes folding cost something."""
    def neighbours(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        s = (x @ x.transpose(-1, -2)) / temperature
        eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
        return F.softmax(s.masked_fill(eye, float("-inf")), dim=-1)

    p, q = neighbours(reference).detach(), neighbours(embedded)
    pl, ql, total = p, q, embedded.new_zeros(())
    for level in range(levels):
        if level:
            pl, ql = pl @ p, ql @ q
        log_m = (0.5 * (pl + ql)).clamp_min(1e-30).log()      # clamped: a row's own entry is 0, and the
        js = 0.5 * (pl * (pl.clamp_min(1e-30).log() - log_m)).sum(-1) \
            + 0.5 * (ql * (ql.clamp_min(1e-30).log() - log_m)).sum(-1)  # gradient of 0 * log 0 must be 0, not NaN
        total = total + js.mean()
    return total / levels


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' features concatenated, gradients flowing back to each rank's own slice (DDP)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x), dim=0)
