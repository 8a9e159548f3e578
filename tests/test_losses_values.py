"""Every objective in losses.py against a value written out by hand (loops over math.log / math.exp), so a changed
constant, sign or reduction axis shows. Found by the mutation run (scripts/mutation.sh): the older tests compared
only orderings (a good batch scores better than a bad one), which most one-line bugs preserve."""
import math

import pytest
import torch

from clipforge.losses.functional import (clip_loss, distill_loss, gather_with_grad, multi_positive_infonce, multilabel_loss,
                              pair_loss, siglip_loss)


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


LOGITS = torch.tensor([[1.5, -0.5, 0.2, 2.0, -1.0],
                       [0.3, 0.9, -2.0, 0.0, 0.4],
                       [-1.2, 0.6, 1.1, -0.3, 0.8]])
POS = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]])


def _infonce_by_hand(logits, targets):
    total = 0.0
    for row, t in zip(logits.tolist(), targets.tolist()):
        lse = math.log(sum(math.exp(v) for v in row))
        total += -sum(ti / sum(t) * (v - lse) for v, ti in zip(row, t))
    return total / len(logits)


def test_infonce_normalises_weighted_targets():
    """Targets are normalised per row: weights 0.25 + 0.25 give the same loss as 1 + 1 (label smoothing style)."""
    assert float(multi_positive_infonce(LOGITS, 0.25 * POS)) == pytest.approx(_infonce_by_hand(LOGITS, POS), abs=1e-6)
    assert float(multi_positive_infonce(LOGITS, 0.25 * POS)) == pytest.approx(float(multi_positive_infonce(LOGITS, POS)), abs=1e-6)


def test_infonce_of_a_stack_of_members_is_the_mean_of_their_losses():
    """(K, N, M) logits and targets, as the K heads of an ensemble give them: the mean over members and rows."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, generator=g)
    targets = torch.stack([torch.eye(3, 4), torch.tensor([[0.0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])])
    want = sum(_infonce_by_hand(logits[k], targets[k]) for k in range(2)) / 2
    assert float(multi_positive_infonce(logits, targets)) == pytest.approx(want, abs=1e-6)


def test_losses_keep_the_device_of_their_logits():
    """Default positives are made on the logits' device: with 'meta' tensors a CPU eye would not mix."""
    meta = torch.empty(3, 3, device="meta")
    assert clip_loss(meta).device.type == "meta"
    assert siglip_loss(meta).device.type == "meta"


def test_siglip_loss_by_hand_on_a_non_square_batch():
    want = 0.0
    for row, pos in zip(LOGITS.tolist(), POS.tolist()):
        want += -sum(_log_sigmoid((2 * p - 1) * v) for v, p in zip(row, pos))
    want /= len(LOGITS)                                    # summed over texts, averaged over images
    assert float(siglip_loss(LOGITS, POS)) == pytest.approx(want, abs=1e-5)
    square = LOGITS[:, :3]
    eye_want = sum(-sum(_log_sigmoid((1 if i == j else -1) * v) for j, v in enumerate(row))
                   for i, row in enumerate(square.tolist())) / 3
    assert float(siglip_loss(square)) == pytest.approx(eye_want, abs=1e-5)     # default positives: the diagonal


def test_multilabel_loss_is_the_mean_binary_cross_entropy_and_broadcasts_targets():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 1.2, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0]])              # one target row shared by both images
    want = 0.0
    for row in logits.tolist():
        for v, t in zip(row, targets[0].tolist()):
            want += -(t * math.log(_sigmoid(v)) + (1 - t) * math.log(1 - _sigmoid(v)))
    assert float(multilabel_loss(logits, targets)) == pytest.approx(want / 6, abs=1e-6)


def test_pair_loss_values_by_hand():
    scores, labels = torch.tensor([0.5, -0.1, 0.9]), torch.tensor([1.0, -1.0, -1.0])
    assert float(pair_loss(scores, labels)) == pytest.approx((0.5 + 0.9 + 1.9) / 3)          # default: l1
    # margin: relu(m - y s): 0.2-0.5 -> 0, 0.2-0.1 -> 0.1, 0.2+0.9 -> 1.1 (default margin 0.2)
    assert float(pair_loss(scores, labels, "margin")) == pytest.approx((0 + 0.1 + 1.1) / 3)
    assert float(pair_loss(scores, labels, "margin", margin=1.0)) == pytest.approx((0.5 + 0.9 + 1.9) / 3)
    p, y = [(s + 1) / 2 for s in scores.tolist()], [(v + 1) / 2 for v in labels.tolist()]
    bce = -sum(yi * math.log(pi) + (1 - yi) * math.log(1 - pi) for pi, yi in zip(p, y)) / 3
    assert float(pair_loss(scores, labels, "bce")) == pytest.approx(bce, rel=1e-5)


def test_pair_bce_clamps_certain_wrong_answers_to_a_finite_loss():
    """A score of exactly -1 for a match (and +1 for a non-match) costs -log(1e-6), not BCE's cap of 100."""
    got = float(pair_loss(torch.tensor([-1.0, 1.0]), torch.tensor([1.0, -1.0]), "bce"))
    assert got == pytest.approx(-math.log(1e-6), rel=1e-2)


def test_pair_loss_names_the_variants_it_knows():
    with pytest.raises(ValueError, match="must be l1, bce or margin, not 'hinge'"):
        pair_loss(torch.zeros(1), torch.ones(1), "hinge")


def test_distill_losses_by_hand():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert float(distill_loss(student, teacher)) == pytest.approx((1 + 1 + 0 + 1) / 4)         # default: mse
    assert float(distill_loss(student, teacher, "mse")) == pytest.approx(0.75)
    # cosine: 1 - cos per row (rows 0: orthogonal -> 1; row 1: parallel -> 0)
    assert float(distill_loss(student, teacher, "cosine")) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="must be mse or cosine, not 'l2'"):
        distill_loss(student, teacher, "l2")


def test_gather_with_grad_is_the_identity_without_a_process_group():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


def test_gather_with_grad_concatenates_every_rank_along_the_batch(monkeypatch):
    """Two ranks, simulated: the gathered batch is [mine; theirs] along dim 0 and my gradient reaches my slice."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn
    other = torch.full((2, 3), 7.0)
    world = {"size": 2}
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: world["size"])
    monkeypatch.setattr(dist_fn, "all_gather", lambda t: (t * 1.0, other))
    x = torch.arange(6.0).reshape(2, 3).requires_grad_()
    out = gather_with_grad(x)
    assert out.shape == (4, 3) and torch.equal(out[:2], x.detach()) and torch.equal(out[2:], other)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones(2, 3))
    world["size"] = 1                                      # one rank: nothing to gather
    assert gather_with_grad(x) is x
