"""The STRUCTURE regulariser (losses.functional.structure_loss) and its use by the class objective."""
import torch

from clipforge.config import HeadConfig, LossConfig
from clipforge.losses.classes import ClassBatchData, class_objective
from clipforge.losses.functional import structure_loss
from clipforge.model.dual_encoder import DualEncoder
from objutil import FeatTower


def test_zero_for_the_same_geometry_positive_for_a_folded_one():
    torch.manual_seed(0)
    x = torch.randn(30, 12)
    q, _ = torch.linalg.qr(torch.randn(12, 12))
    assert structure_loss(x, x).abs() < 1e-6
    assert structure_loss(x, x @ q).abs() < 1e-5                         # a rotation keeps every neighbourhood
    assert structure_loss(x, 3.0 * x).abs() < 1e-6                       # so does a scale (cosines)
    folded = x[torch.randperm(30)]                                        # the same points, neighbours scrambled
    assert structure_loss(x, folded) > 0.05
    assert structure_loss(x, folded, levels=2) != structure_loss(x, folded)
    # bounded like a JS divergence (ln 2), never NaN although each row's own entry is 0
    far = structure_loss(x, torch.randn(30, 12), temperature=0.01)
    assert torch.isfinite(far) and 0 < far <= torch.log(torch.tensor(2.0)) + 1e-6


def test_batched_heads_average_and_only_the_embedding_gets_gradients():
    torch.manual_seed(1)
    x = torch.randn(20, 8, requires_grad=True)
    z = torch.randn(3, 20, 5, requires_grad=True)
    got = structure_loss(x, z)
    assert torch.allclose(got, torch.stack([structure_loss(x, m) for m in z]).mean(), atol=1e-6)
    got.backward()
    assert x.grad is None and z.grad.abs().sum() > 0


def test_class_objective_adds_the_weighted_term_and_draws_nothing_when_off():
    torch.manual_seed(0)
    model = DualEncoder(FeatTower(10, "image"), FeatTower(6, "text"), HeadConfig(embed_dim=6), ensemble=2).train()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    data = ClassBatchData(torch.randn(8, 10), labels, torch.randn(6, 6), torch.eye(3).repeat_interleave(2, 1), [0, 1, 2])
    model.image_head.fit_normalizer(data.image_feats)
    idx = torch.arange(8)
    base = class_objective(model, data, LossConfig())
    state = torch.get_rng_state()
    plain = base(idx)
    assert torch.equal(state, torch.get_rng_state())                    # off: no random subset is drawn
    with_term = class_objective(model, data, LossConfig(structure_weight=0.5))(idx)
    feats = data.image_feats
    z = model.image_head.members_forward(feats)
    term = structure_loss(model.image_head.standardised(feats), z, 0.1)
    assert torch.allclose(with_term, plain + 0.5 * term * 2, atol=1e-6)   # summed over the 2 heads like the fit
    sub = class_objective(model, data, LossConfig(structure_weight=0.5, structure_sample=4))
    torch.manual_seed(3)
    assert torch.isfinite(sub(idx)) and sub(idx) != with_term             # a subset of 4 of the 8 images


def _reference(x, z, temperature, levels):
    """Row by row, with the diagonal removed by hand: the definition, without the batched tricks."""
    def rows(a):
        a = a / a.norm(dim=-1, keepdim=True)
        s = (a @ a.T) / temperature
        p = torch.zeros_like(s)
        for i in range(len(s)):
            keep = [j for j in range(len(s)) if j != i]
            p[i, keep] = torch.softmax(s[i, keep], 0)
        return p

    def js(p, q):            # over every entry a walk can reach: 2-step walks do return to their start
        out = []
        for i in range(len(p)):
            keep = [j for j in range(len(p)) if p[i, j] > 0 and q[i, j] > 0]
            a, b = p[i, keep], q[i, keep]
            m = (a + b) / 2
            out.append(0.5 * (a * (a / m).log()).sum() + 0.5 * (b * (b / m).log()).sum())
        return torch.stack(out).mean()

    p, q = rows(x), rows(z)
    total, pl, ql = 0.0, p, q
    for level in range(levels):
        if level:
            pl, ql = pl @ p, ql @ q
        total = total + js(pl, ql)
    return total / levels


def test_equals_the_row_by_row_definition_for_heads_and_levels():
    torch.manual_seed(4)
    x, z = torch.randn(9, 7), torch.randn(3, 9, 5)
    for levels in (1, 2):
        want = torch.stack([_reference(x, zk, 0.3, levels) for zk in z]).mean()
        assert torch.allclose(structure_loss(x, z, 0.3, levels), want, atol=1e-5)
