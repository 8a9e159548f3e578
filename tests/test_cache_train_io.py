import numpy as np
import torch

from clipforge.embed.cache import EmbeddingCache, embed_dataset
from clipforge.config import HeadConfig
from clipforge.data.dataset import ClassDataset
from clipforge.model.dual_encoder import DualEncoder
from clipforge.towers.base import ImagePreprocess, Tower
from clipforge.train.trainer import ParamGroup, Trainer


class CountingTower(Tower):
    """A tiny image tower that counts its forward calls."""
    modality = "image"
    dim = 3

    def __init__(self, size=8):
        super().__init__()
        self.pre = ImagePreprocess(size=size)
        self.tower_id = "test:counting"
        self.calls = 0
        self.lin = torch.nn.Linear(3, 3)

    def prepare(self, items):
        return self.pre(items)

    def preprocess_key(self):
        return self.pre.key()

    def forward(self, x):
        self.calls += 1
        return self.lin(x.mean((2, 3)))


def _ds(n=12):
    rng = np.random.RandomState(0)
    return ClassDataset("toy", ["a", "b"], rng.randint(0, 255, (n, 10, 10), dtype=np.uint8), np.arange(n) % 2)


def test_second_run_hits_cache_and_changed_key_recomputes(tmp_path):
    cache = EmbeddingCache(tmp_path)
    tower = CountingTower()
    f1, y1 = embed_dataset(tower, _ds(), cache, progress=False)
    calls = tower.calls
    assert calls > 0 and cache.misses == 1
    f2, y2 = embed_dataset(tower, _ds(), EmbeddingCache(tmp_path), progress=False)
    assert tower.calls == calls                       # nothing recomputed
    np.testing.assert_array_equal(f1, f2)
    other = CountingTower(size=16)                   # different preprocessing -> different key
    other.load_state_dict(tower.state_dict())
    embed_dataset(other, _ds(), cache, progress=False)
    assert other.calls > 0
    changed = _ds()
    changed.images[0, 0, 0] ^= 1                     # different data -> different key
    embed_dataset(tower, changed, cache, progress=False)
    assert tower.calls > calls


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    cache = EmbeddingCache(tmp_path)
    tower = CountingTower()
    good, y = embed_dataset(tower, _ds(), cache, progress=False)
    entries = list(tmp_path.glob("*.npz"))
    assert entries
    for f in entries:
        f.write_bytes(b"half a file")
    calls = tower.calls
    again = EmbeddingCache(tmp_path)
    f, y2 = embed_dataset(tower, _ds(), again, progress=False)
    assert again.misses == 1 and again.hits == 0 and tower.calls > calls     # recomputed, not read back
    np.testing.assert_allclose(f, good, rtol=0, atol=1e-6)                     # the same features as before
    np.testing.assert_array_equal(y2, y)
    calls = tower.calls
    third = EmbeddingCache(tmp_path)                                          # the rewritten entry is readable
    f3, _ = embed_dataset(tower, _ds(), third, progress=False)
    assert third.hits == 1 and tower.calls == calls
    np.testing.assert_array_equal(f3, f)


def _fit(out_dir, epochs, stop_after=None, resume=False):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x = torch.randn(32, 4)
    y = (x[:, 0] > 0).long()
    trainer = Trainer(model, [ParamGroup("m", model, 0.05)], epochs, 2, out_dir, warmup_steps=2, progress=False,
                      tensorboard=False)

    class Stop(Exception):
        pass

    def on_epoch_end(epoch):
        if stop_after is not None and epoch == stop_after:
            raise Stop

    def batches(epoch):
        g = torch.Generator().manual_seed(epoch)
        perm = torch.randperm(32, generator=g)
        yield perm[:16]
        yield perm[16:]

    try:
        trainer.fit(batches, lambda idx: torch.nn.functional.cross_entropy(model(x[idx]), y[idx]),
                    resume=resume, on_epoch_end=on_epoch_end)
    except Stop:
        return None
    return model, trainer


def test_resume_finishes_like_an_uninterrupted_run(tmp_path):
    full, _ = _fit(tmp_path / "a", 10)
    assert _fit(tmp_path / "b", 10, stop_after=4) is None      # "killed" after epoch 4
    assert (tmp_path / "b" / "last.pt").is_file() and (tmp_path / "b" / "best.pt").is_file()
    resumed, trainer = _fit(tmp_path / "b", 10, resume=True)
    assert trainer.state.epoch == 10 and len(trainer.state.history) == 10
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert not list((tmp_path / "b").glob(".*.tmp"))           # no half-written checkpoint left


def test_per_module_learning_rates():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    t = Trainer(torch.nn.ModuleList([a, b]), [ParamGroup("a", a, 1e-2), ParamGroup("b", b, 1e-4)], 1, 1,
                warmup_steps=0, progress=False, tensorboard=False)
    assert [g["lr"] for g in t.opt.param_groups] == [1e-2, 1e-4]


def test_save_and_reload_gives_identical_scores(tmp_path):
    from clipforge.towers import build_tower
    image = build_tower("pkg:efficientnet-lite0", "image", image_size=32)
    text = build_tower("pkg:all-MiniLM-L6-v2", "text")
    image.lock(), text.lock()
    model = DualEncoder(image, text, HeadConfig(kind="mlp"), ensemble=2, tower_opts={"image_size": 32, "invert": False})
    with torch.no_grad():                    # make the heads non-trivial
        for p in model.image_head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        model.image_head.members[0].mean.add_(0.3)
    imgs = np.random.RandomState(0).randint(0, 255, (3, 28, 28), dtype=np.uint8)
    texts = ["a shoe", "a bag", "a coat"]
    before = model.similarity_matrix(model.encode_image(imgs), model.encode_text(texts))
    model.save_pretrained(tmp_path / "m")
    again = DualEncoder.from_pretrained(tmp_path / "m")
    after = again.similarity_matrix(again.encode_image(imgs), again.encode_text(texts))
    np.testing.assert_allclose(before, after, atol=1e-6)
    assert (tmp_path / "m" / "model.safetensors").stat().st_size < 10_000_000   # locked towers (107 MB) are not copied


def test_siamese_model_roundtrip(tmp_path):
    from clipforge.towers import build_tower
    image = build_tower("pkg:efficientnet-lite0", "image", image_size=32)
    text = build_tower("pkg:all-MiniLM-L6-v2", "text")
    model = DualEncoder(image, text, HeadConfig(similarity="siamese", siamese_hidden=8),
                        tower_opts={"image_size": 32})
    z, t = torch.randn(2, 384), torch.randn(3, 384)
    model.save_pretrained(tmp_path / "s")
    again = DualEncoder.from_pretrained(tmp_path / "s")
    np.testing.assert_allclose(model.similarity_matrix(z, t), again.similarity_matrix(z, t), atol=1e-6)
