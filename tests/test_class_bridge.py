"""The concept bridge of the class pipeline: the ImageNet concept bank blended into a trained model's scores."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipforge.config import load_config
from clipforge.data import SkipReport
from clipforge.data.descriptions import from_templates
from clipforge.pipelines import classes as align
from clipforge.pipelines.class_data import Prepared
from objutil import FeatTower


class HeadTower(FeatTower):
    """A feature tower with a fixed 1000-way 'ImageNet' classifier on its features."""
    has_imagenet_head = True

    def __init__(self, dim):
        super().__init__(dim, "image")
        self.classifier = torch.nn.Linear(dim, 1000)

    def imagenet_logits(self, feats):
        return self.classifier(feats)


def _prepared(image_tower, seed=0):
    rng = np.random.RandomState(seed)
    names = ["cat", "dog", "car", "ship"]
    desc = from_templates(names, ["a photo of a {}."])
    vocab = desc.vocabulary()
    y = np.repeat(np.arange(4), 8)
    x = (rng.randn(32, 10) + np.eye(4, 10)[y] * 3).astype(np.float32)
    return Prepared(names, [0, 1, 2], [3], x, y, x.copy(), y.copy(), desc, vocab,
                    rng.randn(len(vocab), 6).astype(np.float32), image_tower, FeatTower(6, "text"), SkipReport(), {})


@pytest.fixture
def fake_bank(monkeypatch):
    bank = torch.randn(1000, 6, generator=torch.Generator().manual_seed(3))

    def attach(model, text_tower, bridge_cfg, cache):
        model.attach_bridge(bank, bridge_cfg.alpha, bridge_cfg.temperature)
    monkeypatch.setattr(align, "attach_concept_bridge", attach)
    return bank


def test_scores_blend_the_head_and_the_concept_bank(fake_bank):
    torch.manual_seed(0)
    p = _prepared(HeadTower(10))
    cfg = load_config(None, ["train.epochs=3", "train.ensemble=2", "bridge.alpha=0.4"])
    model = align.train_model(cfg, p, progress=False)
    assert model.bridge is not None and model.bridge_off is None and model.bridge_alpha == pytest.approx(0.4)
    got = align.class_scores(model, p, p.test_x)
    x = torch.from_numpy(p.test_x)
    with torch.no_grad():
        head = model.image_head(x)
        probs = F.softmax(p.image_tower.imagenet_logits(x), -1)
        conse = F.normalize(probs @ F.normalize(fake_bank, dim=-1), dim=-1)
        text = F.normalize(torch.from_numpy(p.vocab_feats), dim=-1)   # one template: a class is its sentence
        want = 0.6 * head @ text.T + 0.4 * conse @ text.T
    order = [p.vocab.index(p.descriptions.vocabulary([c])[0]) for c in range(4)]
    assert np.allclose(got, want[:, order].numpy(), atol=1e-5)                  # cosines, blended 0.6 / 0.4
    assert not np.allclose(got, (head @ text.T)[:, order].numpy(), atol=1e-3)  # not the head alone


def test_off_at_zero_and_for_a_tower_without_an_imagenet_head(fake_bank):
    p = _prepared(HeadTower(10))
    plain = align.train_model(load_config(None, ["train.epochs=2", "bridge.alpha=0"]), p, progress=False)
    assert plain.bridge is None and plain.bridge_off is None
    no_head = _prepared(FeatTower(10, "image"))
    m = align.train_model(load_config(None, ["train.epochs=2"]), no_head, progress=False)
    assert m.bridge is None and "no ImageNet head" in m.bridge_off
    siamese = align.train_model(load_config(None, ["train.epochs=2", "head.similarity=siamese"]), p, progress=False)
    assert siamese.bridge is None and "cosine" in siamese.bridge_off
