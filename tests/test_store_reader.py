"""The store's mini-batch reader (embed/store_reader.py): every row once per epoch, a different order each epoch
(the same for the same seed and epoch), shards mixed within batches, and a buffer bound that does not grow with N."""
from __future__ import annotations

import numpy as np
import pytest

from clipforge.embed.store_reader import FeatureStore, ShuffledBatches
from clipforge.errors import ClipforgeError

from storeutil import synthetic_store

COUNTS = [37, 50, 1, 0, 64, 29]  # uneven, one single-row shard, one empty shard


@pytest.fixture()
def store(tmp_path):
    img, txt = synthetic_store(tmp_path / "s", COUNTS)
    return FeatureStore(tmp_path / "s"), img, txt


def _epoch(reader, epoch):
    return list(reader(epoch))


def test_every_row_exactly_once_per_epoch_with_its_own_features(store):
    fs, img, txt = store
    reader = ShuffledBatches(fs, batch_size=16, buffer_rows=48, block_rows=8, seed=3)
    for epoch in range(3):
        batches = _epoch(reader, epoch)
        rows = np.concatenate([b.rows for b in batches])
        assert sorted(rows.tolist()) == list(range(sum(COUNTS)))        # all of them, none twice
        assert [len(b.rows) for b in batches[:-1]] == [16] * (len(batches) - 1) and len(batches) == len(reader)
        for b in batches:                                               # a row's features travel with its id
            np.testing.assert_array_equal(b.image, img[b.rows])
            np.testing.assert_array_equal(b.text, txt[b.rows])


def test_order_differs_across_epochs_and_repeats_for_the_same_seed(store):
    fs, _, _ = store
    a = ShuffledBatches(fs, 16, 48, 8, seed=3)
    b = ShuffledBatches(fs, 16, 48, 8, seed=3)
    order = lambda r, e: np.concatenate([x.rows for x in r(e)]).tolist()  # noqa: E731
    assert order(a, 0) == order(b, 0) and order(a, 1) == order(b, 1)   # a resumed run sees the same batches
    assert order(a, 0) != order(a, 1)
    assert order(a, 0) != order(ShuffledBatches(fs, 16, 48, 8, seed=4), 0)
    shards = np.searchsorted(fs.offsets, np.concatenate([x.rows for x in a(0)]), side="right") - 1
    first = shards[:16]
    assert len(set(first.tolist())) > 1                                 # a batch mixes shards
    assert order(a, 0) != sorted(order(a, 0))


def test_peak_rows_held_is_bounded_by_the_buffer_not_by_n(tmp_path):
    peaks = []
    for n_shards in (4, 40):                                            # 10x the rows
        root = tmp_path / f"s{n_shards}"
        synthetic_store(root, [25] * n_shards)
        reader = ShuffledBatches(FeatureStore(root), batch_size=10, buffer_rows=60, block_rows=20, seed=0)
        rows = np.concatenate([b.rows for b in reader(0)])
        assert len(rows) == 25 * n_shards
        assert reader.peak_rows <= reader.max_rows_held == 60 + 10 - 1
        groups = reader.buffers(0)
        assert all(sum(e - s for _, s, e in g) <= 60 for g in groups)
        assert sum(e - s for g in groups for _, s, e in g) == 25 * n_shards
        peaks.append(reader.peak_rows)
    assert peaks[1] <= peaks[0] + 10                                    # does not grow with N


def test_drop_last_gives_whole_batches_only(store):
    fs, _, _ = store
    reader = ShuffledBatches(fs, 16, 48, 8, seed=0, drop_last=True)
    batches = _epoch(reader, 0)
    assert len(batches) == len(reader) == sum(COUNTS) // 16
    assert all(len(b.rows) == 16 for b in batches)
    assert len(set(np.concatenate([b.rows for b in batches]).tolist())) == 16 * len(batches)


def test_bad_buffer_sizes_are_one_clear_error(store):
    fs, _, _ = store
    with pytest.raises(ClipforgeError, match="shuffle buffer"):
        ShuffledBatches(fs, batch_size=64, buffer_rows=32)
    with pytest.raises(ClipforgeError, match="batch size"):
        ShuffledBatches(fs, batch_size=0)


def test_stats_are_exact_over_the_whole_store(store):
    fs, img, txt = store
    for side, x in (("image", img), ("text", txt)):
        mean, std = fs.stats(side, block_rows=7)                        # many blocks, combined
        np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(std, x.astype(np.float64).std(0, ddof=1), rtol=1e-10)
