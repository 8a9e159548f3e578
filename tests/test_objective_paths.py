"""The Objective base's less travelled paths: its defaults, the frozen shuffling rule, autocast, trunk and raw
image inputs, strings through the text tower, and text embeddings without the concept bridge."""
import torch

from clipforge.config import HeadConfig
from clipforge.losses.objective import Objective, autocast, shuffled_indices
from clipforge.model.dual_encoder import DualEncoder
from objutil import FeatTower


class TrunkTower(FeatTower):
    """Records what the objective hands to ``from_trunk``."""
    def from_trunk(self, h, last_n):
        self.seen = (h.clone(), last_n)
        return h * last_n


def _model(image=None):
    torch.manual_seed(0)
    return DualEncoder(image or FeatTower(4, "image"), FeatTower(6, "text"), HeadConfig(embed_dim=6), ensemble=1)


def test_defaults_are_one_full_batch_of_cached_features_seed_zero():
    m = _model()
    empty = list(Objective(m).batches(0))
    assert len(empty) == 1 and len(empty[0]) == 0                          # n defaults to 0 items
    o = Objective(m, n=5)
    assert [b.tolist() for b in o.batches(0)] == [[0, 1, 2, 3, 4]]         # batch_size 0 = one full batch, in order
    seeded = Objective(m, n=10, batch_size=3)
    assert [b.tolist() for b in seeded.batches(1)] == [b.tolist() for b in shuffled_indices(10, 3, 0, 1)]
    x = torch.randn(3, 4)
    assert torch.equal(o.image_features(x.numpy()), x)                    # cached features pass through
    t = torch.randn(2, 6)
    assert torch.allclose(o.text_embeddings(t.numpy()), m.embed_text_features(t, with_bridge=False))


def test_shuffling_rule_is_frozen_and_keeps_the_short_last_batch_by_default():
    """Frozen: a run resumed from an older checkpoint must replay the same batches."""
    got = shuffled_indices(10, 4, seed=3, epoch=2)
    want = torch.randperm(10, generator=torch.Generator().manual_seed(3 * 100_003 + 2))
    assert [b.tolist() for b in got] == [want[:4].tolist(), want[4:8].tolist(), want[8:].tolist()]
    assert [len(b) for b in shuffled_indices(10, 4, 3, 2, drop_last=True)] == [4, 4]


def test_autocast_picks_the_precision():
    with autocast("bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("fp16"):
        assert torch.get_autocast_dtype("cpu") == torch.float16
    with autocast("fp32"):
        assert not torch.is_autocast_enabled("cpu")


def test_trunk_activations_and_raw_images_with_augmentation():
    tower = TrunkTower(4, "image")
    m = _model(tower)
    h = torch.randn(3, 4)
    got = Objective(m, image_cached=False, image_trunk_blocks=2).image_features(h.numpy())
    assert torch.equal(tower.seen[0], h) and tower.seen[1] == 2 and torch.allclose(got, 2 * h)
    shift = Objective(m, image_cached=False, augment=lambda x: x + 100.0)
    raw = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.allclose(shift.image_features(raw.numpy()), tower(raw + 100.0))
        assert torch.allclose(shift.eval().image_features(raw.numpy()), tower(raw))   # no augmentation in eval


def test_strings_go_through_the_text_tower_and_the_bridge_stays_out_of_training():
    m = _model()
    t = torch.randn(2, 6)
    through = Objective(m, text_cached=False).text_embeddings(t.numpy())
    with torch.no_grad():
        assert torch.allclose(through, m.embed_text_features(m.text_tower(t), with_bridge=False))
    m.image_tower.has_imagenet_head = True
    m.attach_bridge(torch.randn(1000, 6), 0.4)
    plain = Objective(m).text_embeddings(t.numpy())
    assert plain.shape == (2, 6) and torch.allclose(plain, torch.nn.functional.normalize(t, dim=-1))
