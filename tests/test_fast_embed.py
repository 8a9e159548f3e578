"""The fast embedding path: BatchNorm folding, backends equal to eager, the per-machine choice, the overlapped
pipeline in cache.embed_images (same features, same skips, bounded memory), and the benchmark commands' plumbing."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from clipforge.embed import cache as cache_mod
from clipforge.embed import fast as fast_embed
from clipforge.embed.cache import embed_images
from clipforge.errors import ClipforgeError
from clipforge.embed.fast import fast_encoder, fold_batchnorm
from clipforge.towers.base import ImagePreprocess, Tower

from imgutil import _jpeg_bytes, _noise


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPFORGE_FAST_CACHE", str(tmp_path / "fast"))
    monkeypatch.delenv("CLIPFORGE_EMBED_BACKEND", raising=False)


@pytest.fixture(scope="module")
def lite0():
    from clipforge.towers import build_tower
    return build_tower("pkg:efficientnet-lite0", "image", image_size=32).lock()


class ConvBNTower(Tower):
    """conv -> BN -> ReLU -> conv -> BN, plus a conv whose output feeds a BN and a residual (must not be folded)."""
    modality, dim, tower_id = "image", 8, "test:convbn"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pre = ImagePreprocess(size=16)
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        for bn in (self.b1, self.b2, self.b3):  # non-trivial running statistics
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)

    def prepare(self, items):
        return self.pre(items)

    def preprocess_key(self):
        return self.pre.key()

    def forward(self, x):
        x = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        y = self.c3(x)
        return (self.b3(y) + y).mean((2, 3))        # y also feeds the residual: b3 cannot be folded into c3


def test_fold_batchnorm_matches_and_leaves_shared_outputs_alone():
    t = ConvBNTower().eval()
    gm, folded = fold_batchnorm(t)
    assert folded == 2
    remaining = [m for m in gm.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(remaining) == 1
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(gm(x).numpy(), t(x).numpy(), atol=1e-5)
    assert t.b1.running_mean.abs().sum() > 0 and isinstance(t.b1, nn.BatchNorm2d)  # the original is untouched


def test_fold_batchnorm_on_efficientnet_lite0(lite0):
    gm, folded = fold_batchnorm(lite0)
    assert folded == 49 and not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(gm(x).numpy(), lite0.eval()(x).numpy(), atol=1e-4)


@pytest.mark.parametrize("backend", ["onnx-parallel", "onnx", "fused", "eager"])
def test_every_backend_matches_the_eager_tower(lite0, backend):
    enc = fast_encoder(lite0, backend)
    assert enc.backend == backend
    x = lite0.prepare([_noise(i, 40) for i in range(5)])
    with torch.inference_mode():
        ref = lite0.eval()(x).numpy()
    out = enc(x)
    assert out.dtype == np.float32 and out.shape == (5, 1280)
    np.testing.assert_allclose(out, ref, atol=2e-4 * max(1.0, np.abs(ref).max()))


def test_auto_choice_is_timed_once_and_saved_per_machine(tmp_path, monkeypatch):
    tower = ConvBNTower()
    enc = fast_encoder(tower)
    assert enc.backend in fast_embed.BACKENDS and enc.timings
    choices = json.loads((tmp_path / "fast" / "choices.json").read_text())
    (key, saved), = choices.items()
    assert saved["backend"] == enc.backend and json.loads(key)[2] == "test:convbn"
    assert set(saved["timings"]) >= {"fused/8", "eager/8"}          # every candidate that works was timed

    def no_timing(*a, **k):
        raise AssertionError("timed again although the choice is saved")
    monkeypatch.setattr(fast_embed, "_tune", no_timing)
    again = fast_encoder(ConvBNTower())                              # a new process would see the same file
    assert again.backend == enc.backend and again.micro_batch == enc.micro_batch


def test_changed_weights_get_a_new_encoder_and_training_mode_is_kept():
    tower = ConvBNTower()
    x = tower.prepare([_noise(1, 16)])
    before = fast_encoder(tower, "onnx")(x)
    with torch.no_grad():
        tower.c1.weight.mul_(2)
    tower.train()
    after = fast_encoder(tower, "eager")(x)
    assert tower.training                                           # the eager backend restored the mode
    with torch.inference_mode():
        np.testing.assert_allclose(after, tower.eval()(x).numpy(), atol=1e-5)
    assert not np.allclose(before, after)
    assert fast_encoder(tower, "onnx")(x) == pytest.approx(after, abs=1e-4)  # re-exported with the new weights


def test_bad_backend_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CLIPFORGE_EMBED_BACKEND", "gpu-please")
    with pytest.raises(ClipforgeError, match="CLIPFORGE_EMBED_BACKEND"):
        embed_images(ConvBNTower(), np.zeros((2, 8, 8), np.uint8), progress=False)


def _mixed_files(root, n_good=21):
    """Good images of varied sizes with broken ones in between (so batches and kept positions interleave)."""
    root.mkdir()
    items = []
    for i in range(n_good):
        p = root / f"{i:02d}.png"
        _noise(i, 10 + 3 * i, mode="RGBA" if i % 3 else "RGB").save(p)
        items.append(p)
        if i % 5 == 2:
            bad = root / f"{i:02d}-bad.jpg"
            bad.write_bytes(_jpeg_bytes(i)[:50] if i % 2 else b"")
            items.append(bad)
    items.append(root / "missing.png")
    return [str(p) for p in items]


@pytest.mark.parametrize("backend", ["onnx", "fused"])
def test_fast_pipeline_equals_the_plain_path(tmp_path, backend):
    tower = ConvBNTower()
    items = _mixed_files(tmp_path / "imgs")
    plain = embed_images(tower, items, batch_size=4, progress=False, backend="off")
    fast = embed_images(tower, items, batch_size=4, workers=3, progress=False, backend=backend)
    assert fast.kept.tolist() == plain.kept.tolist() and len(plain.kept) == 21
    assert fast.skipped == plain.skipped and len(plain.skipped) == 5
    np.testing.assert_allclose(fast.features, plain.features, atol=1e-5)
    arrays = np.random.RandomState(0).randint(0, 255, (10, 12, 12), dtype=np.uint8)   # the uint8-array path
    np.testing.assert_allclose(embed_images(tower, arrays, batch_size=3, progress=False, backend=backend).features,
                               embed_images(tower, arrays, batch_size=3, progress=False, backend="off").features, atol=1e-5)


def test_decoding_runs_ahead_but_memory_stays_bounded(tmp_path, monkeypatch):
    """Decoding overlaps the model, yet never more than two batches wait in memory, however many items there are."""
    tower = ConvBNTower()
    lock = threading.Lock()
    state = {"decoded": 0, "embedded": 0, "max_waiting": 0}

    def fake_load(item):
        with lock:
            state["decoded"] += 1
            state["max_waiting"] = max(state["max_waiting"], state["decoded"] - state["embedded"])
        return Image.new("RGB", (20, 20), (int(item) % 255, 0, 0)), None

    enc = fast_encoder(tower, "fused")

    def counting(x):
        out = enc(x)
        with lock:
            state["embedded"] += len(x)
        return out
    monkeypatch.setattr(cache_mod, "load_image", fake_load)
    monkeypatch.setattr(cache_mod, "fast_encoder", lambda *a, **k: counting)
    emb = embed_images(tower, [str(i) for i in range(300)], batch_size=8, workers=2, progress=False)
    assert len(emb.features) == 300 and state["embedded"] == 300
    assert state["max_waiting"] <= 3 * 8 + 2                       # this batch + the two being decoded ahead


def test_bench_embed_and_train_cache_write_their_json(tmp_path, monkeypatch):
    """Tiny versions of both benchmarks: every row and the acceptance numbers are written (not their values)."""
    from captionutil import make_caption_set
    from benchmarks.embed import run_embed_bench
    from benchmarks.train_cache import run_train_cache_bench
    path = run_embed_bench(tmp_path / "out", n_images=12, image_size=32, naive_batches=(4,), fashion_size=None,
                           log=lambda *a: None)
    data = json.loads(path.read_text())
    assert [r["method"] for r in data["results"]] == ["clipforge", "naive-eager-b4"]
    assert data["results"][0]["metrics"]["images_per_second"] > 0 and data["speedup_vs_best_naive"] > 0
    assert data["results"][1]["metrics"]["max_abs_feature_diff_vs_clipforge"] < 1e-3
    assert all(r["metrics"]["peak_memory_rss_mb"] > 0 for r in data["results"])

    csv = make_caption_set(tmp_path / "shapes", copies=1)
    path = run_train_cache_bench(tmp_path / "out", epochs=2, batch_size=4, source=f"csv:{csv}", image_size=32,
                                 overrides=["bridge.alpha=0", "train.ensemble=1"], log=lambda *a: None, default_epochs=2)
    data = json.loads(path.read_text())
    cached, reencode, default = data["results"]
    assert (cached["method"], reencode["method"]) == ("clipforge-cached", "lit-reencode")
    m = default["metrics"]
    assert "default" in default["method"] and len(m["seconds_per_epoch_all"]) == 2
    assert m["flops_per_epoch"] > 0 and m["achieved_gflops"] > 0 and m["machine_matmul_gflops"] > 0
    assert abs(m["percent_of_machine_matmul"] - 100 * m["achieved_gflops"] / m["machine_matmul_gflops"]) < 0.2
    assert len(cached["metrics"]["seconds_per_epoch_all"]) == 2 and data["speedup_per_epoch"] > 1
    assert data["mr_abs_difference"] < 0.02                         # the same arithmetic: the same model
