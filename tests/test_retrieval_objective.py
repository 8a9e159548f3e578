"""Retrieval recall (several captions per image, chunking) and the contrastive objective (positives, gradient caching)."""
import numpy as np
import torch
import torch.nn.functional as F

from clipforge.losses.contrastive import CaptionBatch, ContrastiveObjective
from clipforge.evaluate.retrieval import retrieval_metrics

from objutil import _batch, _model


def test_recall_counts_any_correct_caption_and_names_directions():
    img = np.eye(3, dtype=np.float32)
    # image 0 has captions 0 and 1; caption 1 is image 0's best match, caption 0 points elsewhere
    txt = np.array([[0, 1, 0], [1, 0, 0], [0, 1.0, 0.1], [0, 0, 1]], dtype=np.float32)
    owner = np.array([0, 0, 1, 2])
    m = retrieval_metrics(img, txt, owner)
    assert m["image_to_text_R@1"] == 1.0          # every image's best caption is ranked first
    assert m["text_to_image_R@1"] == 0.75          # caption 0 ranks image 1 above image 0
    assert m["text_to_image_R@5"] == 1.0
    assert abs(m["MR"] - np.mean([1, 1, 1, 0.75, 1, 1])) < 1e-9
    assert set(k for k in m if "R@" in k) == {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}


def test_recall_matches_brute_force_and_is_chunk_independent():
    rng = np.random.RandomState(0)
    img = rng.randn(50, 8).astype(np.float32)
    owner = rng.randint(0, 50, 120)
    txt = (img[owner] + 1.5 * rng.randn(120, 8)).astype(np.float32)
    m = retrieval_metrics(img, txt, owner, chunk=7)
    assert m == retrieval_metrics(img, txt, owner, chunk=4096)
    s = img @ txt.T
    for k in (1, 5, 10):
        topt = np.argsort(-s, axis=1)[:, :k]
        has = np.isin(np.arange(50), owner)
        i2t = np.mean([np.isin(topt[i], np.flatnonzero(owner == i)).any() for i in range(50) if has[i]])
        topi = np.argsort(-s.T, axis=1)[:, :k]
        t2i = np.mean([owner[j] in topi[j] for j in range(120)])
        assert abs(m[f"image_to_text_R@{k}"] - i2t) < 1e-9 and abs(m[f"text_to_image_R@{k}"] - t2i) < 1e-9


def test_same_image_twice_in_a_batch_is_a_positive_not_a_negative():
    model = _model(ensemble=1)
    obj = ContrastiveObjective(model)
    feats = torch.randn(2, 10)  # two views of one image (one id), each with its own caption
    texts = torch.randn(2, 6)
    with_pos = obj(CaptionBatch(feats, texts, torch.tensor([0, 0])))
    as_negatives = obj(CaptionBatch(feats, texts, torch.tensor([0, 1])))
    img = model.image_head.members_forward(feats)[0]
    txt = model.embed_text_features(texts, with_bridge=False)
    logits = model.similarity(img, txt)
    expected = 0.5 * (-(torch.full((2, 2), 0.5) * F.log_softmax(logits, 1)).sum(1).mean()
                      - (torch.full((2, 2), 0.5) * F.log_softmax(logits.T, 1)).sum(1).mean())
    assert torch.allclose(with_pos, expected, atol=1e-6)
    assert not torch.allclose(with_pos, as_negatives)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_caching_equals_the_full_batch_gradient():
    for kind in ("clip", "siglip"):
        model = _model()
        batch = _batch()
        obj = ContrastiveObjective(model, kind=kind)
        loss = obj(batch)
        loss.backward()
        full = _grads(model)
        model.zero_grad(set_to_none=True)
        cached = obj.cached_gradient_step(batch, micro=5)
        assert not cached.requires_grad and torch.allclose(cached, loss.detach(), atol=1e-6)
        acc = _grads(model)
        assert full.keys() == acc.keys() and len(full) >= 6
        for n in full:
            assert torch.allclose(full[n], acc[n], atol=1e-5), (kind, n)


def test_unlocked_towers_get_gradients_and_bf16_autocast_runs():
    model = _model()
    model.text_tower.lock()
    model.image_tower.unlock()
    obj = ContrastiveObjective(model, image_cached=False, text_cached=False, precision="bf16")
    b = _batch()
    loss = obj(CaptionBatch(b.images.numpy(), b.texts.numpy(), b.owners))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.image_tower.lin.weight.grad is not None and model.image_tower.lin.weight.grad.abs().sum() > 0
    assert model.text_tower.lin.weight.grad is None  # still locked


def test_pair_objective_scores_each_image_with_its_caption_and_one_wrong_one():
    """The seed Pretrained_Model_Alignment on captions: L1 of (own caption -> +1) and (another image's caption -> -1)."""
    from clipforge.config import HeadConfig
    from clipforge.model.dual_encoder import DualEncoder
    from objutil import FeatTower
    torch.manual_seed(0)
    cfg = HeadConfig(kind="linear", embed_dim=6, text_head=True, similarity="siamese", siamese_hidden=8)
    model = DualEncoder(FeatTower(10, "image"), FeatTower(6, "text"), cfg, ensemble=1)
    obj = ContrastiveObjective(model, kind="pair")
    b = _batch(n=12)
    torch.manual_seed(3)
    loss = obj(b)
    # the same draw by hand: the wrong caption of image i comes from a different image id
    img = model.image_head.members_forward(b.images)[0]
    txt = model.embed_text_features(b.texts, with_bridge=False)
    positives = (b.owners[:, None] == b.owners[None, :]).float()
    torch.manual_seed(3)
    neg = torch.multinomial(1 - positives, 1).squeeze(1)
    assert (b.owners[neg] != b.owners).all()
    s_pos, s_neg = model.similarity.pair(img, txt), model.similarity.pair(img, txt[neg])
    expected = 0.5 * ((s_pos - 1).abs().mean() + (s_neg + 1).abs().mean())
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert model.similarity.score[0].weight.grad.abs().sum() > 0
    # a batch of one image id has no wrong caption: a clear error, not a silent NaN
    import pytest
    with pytest.raises(ValueError, match="two different images"):
        obj(CaptionBatch(b.images[:2], b.texts[:2], torch.tensor([0, 0])))



def test_images_without_any_caption_give_zero_metrics_not_an_index_error():
    import numpy as np
    from clipforge.evaluate.retrieval import retrieval_metrics
    m = retrieval_metrics(np.eye(3, dtype=np.float32), np.zeros((0, 3), np.float32), [])
    assert len(m) == 9 and all(v == 0.0 for v in m.values()), m
