"""The class-dataset fine-tune recipe: the image tower's last blocks train with the heads and the similarity, each
with its own learning rate; the frozen trunk runs once; the pretrained tower of the run stays as it was."""
import numpy as np
import pytest
import torch

from clipforge.config import load_config
from clipforge.errors import ClipforgeError
from clipforge.pipelines import classes as align
from clipforge.towers import build_tower


@pytest.fixture(scope="module")
def tower():
    return build_tower("pkg:efficientnet-lite0", "image", image_size=64).eval()


@pytest.mark.parametrize("last_n", [1, 2, 5])
def test_trunk_then_last_blocks_equals_the_whole_forward(tower, last_n):
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tower.from_trunk(tower.trunk(x, last_n), last_n), tower(x), atol=1e-5)


def _cfg(tmp_path, **over):
    sets = ["data.train_per_class=12", "data.test_per_class=6", "towers.image_size=64", "train.epochs=4",
            "train.ensemble=1", "train.batch_size=32", "train.gzsl_pseudo_splits=1", f"cache_dir={tmp_path}/cache",
            f"out={tmp_path}/run"] + [f"{k}={v}" for k, v in over.items()]
    return load_config(None, sets)


def _blocks(tower):
    return [torch.cat([q.detach().flatten().clone() for q in b.parameters()]) for b in tower.blocks()]


def test_fine_tune_trains_only_the_last_blocks_at_their_own_rate(tmp_path):
    cfg = _cfg(tmp_path, **{"towers.unlock_image_last_n": 1, "train.lr_image_tower": 1e-2})
    p = align.prepare(cfg, progress=False)
    before = _blocks(p.image_tower)
    model = align.train_model(cfg, p, progress=False)
    after = _blocks(model.image_tower)
    assert not torch.equal(before[-1], after[-1])                        # the last block trained
    assert all(torch.equal(a, b) for a, b in zip(before[:-1], after[:-1]))   # nothing before it
    assert all(torch.equal(a, b) for a, b in zip(before, _blocks(p.image_tower)))  # the run's tower is untouched
    assert model.image_tower is not p.image_tower and p.image_tower.is_locked

    slow = align.train_model(cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr_image_tower": 1e-9})}),
                             p, progress=False)
    moved_fast = float((after[-1] - before[-1]).abs().max())
    moved_slow = float((_blocks(slow.image_tower)[-1] - before[-1]).abs().max())
    assert moved_slow < moved_fast / 100                                 # train.lr_image_tower is the tower's rate

    tuned = align.features_for(model, p)
    assert tuned.test_x.shape == p.test_x.shape and not np.allclose(tuned.test_x, p.test_x, atol=1e-3)
    assert align.features_for(align.train_model(_cfg(tmp_path), p, progress=False), p) is p
    metrics = align.evaluate_model(model, p, probe=False)
    assert 0.0 <= metrics["unseen_top1"] <= 1.0 and len(metrics["unseen_confusion"]) == 3


def test_too_many_blocks_is_one_clear_error(tmp_path):
    cfg = _cfg(tmp_path, **{"towers.unlock_image_last_n": 40})
    p = align.prepare(cfg, progress=False)
    with pytest.raises(ClipforgeError, match="towers.unlock_image_last_n"):
        align.train_model(cfg, p, progress=False)
