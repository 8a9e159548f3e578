"""Caption heads trained from a feature store (pipelines/store.py): the packaged caption heads learn the pairs,
their input normalisation is the whole store's exact statistics, the model saves and loads, and the reader's
buffer (not N) bounds what is held."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipforge.config import CaptionRunConfig
from clipforge.embed.store import make_manifest
from clipforge.embed.store_reader import FeatureStore
from clipforge.errors import ClipforgeError
from clipforge.model.dual_encoder import DualEncoder
from clipforge.pipelines.store import train_from_store

from storeutil import synthetic_store, towers


@pytest.fixture(scope="module")
def manifest():
    image, text = towers()
    return make_manifest(image, text, ["x"], "float16", "txt")


def _paired_store(root, manifest, counts, seed=0):
    """A store whose image and text rows share a latent: row r of both sides comes from the same 8 numbers."""
    synthetic_store(root, counts, manifest=manifest, seed=seed)
    store = FeatureStore(root)
    rng = np.random.RandomState(seed)
    a = rng.randn(8, store.image_dim)
    b = rng.randn(8, store.text_dim)
    z = rng.randn(store.n, 8)
    img = np.maximum(z @ a, 0) + 0.05 * rng.randn(store.n, store.image_dim)
    txt = z @ b
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    for i in range(store.layout.count):
        s, e = store.offsets[i], store.offsets[i + 1]
        np.save(store.layout.image(i), img[s:e].astype(np.float16))
        np.save(store.layout.text(i), txt[s:e].astype(np.float16))
    return img.astype(np.float16), txt.astype(np.float16)


def _cfg(tmp_path, **train):
    return CaptionRunConfig(train={"batch_size": 96, "epochs": 4, "warmup_steps": 2, "lr": 3e-3, **train},
                            bridge={"alpha": 0.0},
                            out=str(tmp_path / "run"))


def test_default_caption_heads_learn_from_a_store(tmp_path, manifest):
    img, txt = _paired_store(tmp_path / "store", manifest, [100, 90, 130, 80])
    result = train_from_store(tmp_path / "store", _cfg(tmp_path), buffer_rows=160, block_rows=32)
    losses = [h["loss"] for h in result["history"]]
    assert result["n_pairs"] == 400 and result["steps_per_epoch"] == 400 // 96 and len(losses) == 4
    assert losses[-1] < 0.8 * losses[0]
    assert result["shuffle"]["peak_rows_held"] <= 160 + 96 - 1                 # the buffer bounds memory

    model = DualEncoder.from_pretrained(tmp_path / "run" / "model")
    default = CaptionRunConfig().head
    assert model.head_cfg == default and model.ensemble == CaptionRunConfig().train.ensemble  # the packaged heads
    member = model.image_head.members[0]
    x = img.astype(np.float64)
    np.testing.assert_allclose(member.mean.numpy(), x.mean(0), rtol=1e-4, atol=1e-4)
    std = x.std(0, ddof=1)
    live = np.isfinite(member.std.numpy())
    np.testing.assert_allclose(member.std.numpy()[live], std[live], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        model.eval()
        ei = model.embed_image_features(torch.from_numpy(img[:200].astype(np.float32)))
        et = model.embed_text_features(torch.from_numpy(txt[:200].astype(np.float32)))
    r1 = float((torch.argmax(et @ ei.T, 1) == torch.arange(200)).float().mean())
    assert r1 > 10 / 200                                                       # chance is 1/200


def test_store_training_refuses_what_a_store_cannot_do(tmp_path, manifest):
    _paired_store(tmp_path / "store", manifest, [20, 20])
    with pytest.raises(ClipforgeError, match="train.batch_size"):
        train_from_store(tmp_path / "store", _cfg(tmp_path, batch_size=0))
    with pytest.raises(ClipforgeError, match="augment"):
        train_from_store(tmp_path / "store", _cfg(tmp_path, augment=True))
    other = {**manifest, "image_tower": {**manifest["image_tower"], "fingerprint": "0123456789abcdef"}}
    synthetic_store(tmp_path / "moved", [10], manifest=other)
    with pytest.raises(ClipforgeError, match="fingerprint"):
        train_from_store(tmp_path / "moved", _cfg(tmp_path))
