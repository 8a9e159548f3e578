"""``clipforge bench scale``'s parts (benchmarks/scale.py) on tiny inputs: the synthetic shards, the cached-pairs
store, and the ratios and targets its JSON reports (the full suite's numbers are in benchmarks/results/scale.json)."""
from __future__ import annotations

import numpy as np

from benchmarks.scale import make_shards, summarise, write_pair_store
from clipforge.data.dataset import SkipReport
from clipforge.data.wds import iter_samples
from clipforge.embed.store_reader import FeatureStore


def test_synthetic_shards_are_augmented_real_pictures_with_their_captions(tmp_path):
    shards, sources, captions, what = make_shards(tmp_path, 25, 10, 48, seed=1)
    assert len(shards) == 3 and len(sources) == 25 and what
    report = SkipReport()
    samples = list(iter_samples(shards, report))
    assert len(samples) == 25 and not report.items
    assert all(s.image.size == (48, 48) for s in samples)
    for s, k in zip(samples, sources):
        assert captions[k] in s.caption and s.caption != captions[k]       # real caption + template words
    pix = np.stack([np.asarray(s.image, np.float32) for s in samples])
    assert len({p.tobytes() for p in pix.astype(np.uint8)}) == 25          # every sample its own crop/jitter


def test_pair_store_replicates_base_pairs_with_noise(tmp_path):
    rng = np.random.default_rng(0)
    base_img, base_txt = rng.random((7, 5), np.float32) * 4, rng.standard_normal((7, 3), np.float32)
    manifest = {"format": 1, "layout": "clip-retrieval", "dtype": "float16", "caption_field": "txt",
                "image_tower": {"id": "t:i", "fingerprint": "0", "dim": 5}, "text_tower": {"id": "t:t", "fingerprint": "0", "dim": 3}}
    write_pair_store(tmp_path / "s", 40, base_img, base_txt, manifest, store_shard=16)
    store = FeatureStore(tmp_path / "s")
    assert store.n == 40 and list(store.counts) == [16, 16, 8]
    img = np.concatenate([store.read(i, 0, int(c))[0] for i, c in enumerate(store.counts)]).astype(np.float32)
    assert img.dtype == np.float32 and store.read(0, 0, 1)[0].dtype == np.float16
    diff = img - base_img[np.arange(40) % 7]
    assert 0 < np.abs(diff).mean() < 0.5 * base_img.std()                    # near its base pair, not equal


def test_summary_ratios_and_targets():
    embed = [{"n": 100, "seconds": 10.0, "peak_rss_mb": 400.0}, {"n": 500, "seconds": 45.0, "peak_rss_mb": 440.0}]
    train = [{"n": 1_000_000, "seconds_per_epoch": 150.0, "peak_rss_mb": 2100.0},
             {"n": 100_000, "seconds_per_epoch": 10.0, "peak_rss_mb": 1000.0}]
    s = summarise(embed, train)
    assert s["embed"]["rss_ratio"] == 1.1 and s["embed"]["seconds_per_item_ratio"] == 0.9
    assert all(s["embed"]["targets"].values())
    assert s["train"]["rss_ratio"] == 2.1 and s["train"]["seconds_per_item_ratio"] == 1.5     # sorted by N
    assert s["train"]["targets"] == {"rss_ratio<=1.5": False, "0.75<=seconds_per_item_ratio<=1.3": False,
                                     "peak_rss_at_1M_pairs<2048MB": False}
    assert s["train"]["peak_rss_mb"] == {"100000": 1000.0, "1000000": 2100.0}
    assert embed[0]["images_per_second"] == 10.0
