"""The feature store (embed/store.py): what it writes, read back the way clip-retrieval users read it; content keys
and resume; and that an unfinished or mismatched store is never read as if it were whole."""
from __future__ import annotations

import glob
import io
import json

import numpy as np
import pytest
from clipforge.data.images import load_image
from clipforge.embed.store import StoreLayout, embed_to_store, unfinished
from clipforge.embed.store_reader import FeatureStore
from clipforge.errors import ClipforgeError

from storeutil import IMAGE_SIZE, caption, make_shards, towers


@pytest.fixture(scope="module")
def both_towers():
    return towers()


def _embed(shards, out, tw, **kw):
    return embed_to_store([str(s) for s in shards], out, tw[0], tw[1], backend="off", **kw)


def test_store_reads_like_clip_retrieval_output(tmp_path, both_towers):
    import pandas as pd
    import pyarrow.parquet as pq
    shards = make_shards(tmp_path / "shards", n_shards=3, per_shard=5, bad=True)
    summary = _embed(shards, tmp_path / "store", both_towers)
    assert summary.computed == [0, 1, 2] and summary.rows == 15 and summary.skipped == 2

    root = tmp_path / "store"
    img = np.concatenate([np.load(p) for p in sorted(glob.glob(str(root / "img_emb" / "*.npy")))])
    txt = np.concatenate([np.load(p) for p in sorted(glob.glob(str(root / "text_emb" / "*.npy")))])
    meta = pd.concat([pd.read_parquet(p) for p in sorted(glob.glob(str(root / "metadata" / "*.parquet")))],
                     ignore_index=True)
    whole = pq.read_table(root / "metadata").to_pandas()        # the folder as one parquet dataset, as well
    assert img.dtype == txt.dtype == np.float16                  # what clip-retrieval stores
    assert img.shape == (15, both_towers[0].dim) and txt.shape == (15, both_towers[1].dim) and len(meta) == 15
    assert list(whole["key"]) == list(meta["key"])
    assert {"image_path", "caption", "key", "shard"} <= set(meta.columns)
    assert list(meta["key"]) == [f"{s:05d}{k:04d}" for s in range(3) for k in range(5)]  # bad samples left out
    assert list(meta["caption"]) == [caption(s, k) for s in range(3) for k in range(5)]
    assert list(meta["shard"]) == [str(shards[s]) for s in range(3) for _ in range(5)]

    # row 7 is shard 1, key 2: its features are the towers' own on that image and caption (within float16)
    import webdataset as wds
    sample = next(s for s in wds.WebDataset(str(shards[1]), shardshuffle=False) if s["__key__"] == "000010002")
    pil, _ = load_image(io.BytesIO(sample["jpg"]))
    ref_img = both_towers[0].encode([np.asarray(pil.resize((IMAGE_SIZE, IMAGE_SIZE)))])[0]
    ref_txt = both_towers[1].encode([caption(1, 2)])[0]
    np.testing.assert_allclose(img[7].astype(np.float32), ref_img, atol=2e-3 * max(1.0, np.abs(ref_img).max()))
    np.testing.assert_allclose(txt[7].astype(np.float32), ref_txt, atol=2e-3)
    assert not np.allclose(img[7], img[8])

    store = FeatureStore(root)                                    # clipforge's own reader agrees
    assert store.n == 15 and list(store.counts) == [5, 5, 5]
    assert [r[0] for r in store.skipped()] == ["00001.tar:broken-image", "00001.tar:no-caption"]
    assert list(store.metadata().column("key").to_pylist()) == list(meta["key"])


def test_rerun_keeps_done_shards_and_recomputes_only_changed_ones(tmp_path, both_towers):
    shards = make_shards(tmp_path / "shards", n_shards=3, per_shard=3)
    out = tmp_path / "store"
    first = _embed(shards, out, both_towers)
    layout = StoreLayout(out, 3)
    stamps = [layout.done(i).stat().st_mtime_ns for i in range(3)]
    before = np.load(layout.image(1))

    again = _embed(shards, out, both_towers)
    assert again.reused == [0, 1, 2] and again.computed == [] and again.rows == first.rows
    assert [layout.done(i).stat().st_mtime_ns for i in range(3)] == stamps

    make_shards(tmp_path / "other", n_shards=3, per_shard=4, seed=7)     # new bytes for shard 1 under its old name
    (tmp_path / "other" / "00001.tar").replace(shards[1])
    assert unfinished(out) == [1]                                          # the key sees the change at once
    changed = _embed(shards, out, both_towers)
    assert changed.computed == [1] and changed.reused == [0, 2]
    assert np.load(layout.image(1)).shape[0] == 4 and not np.array_equal(np.load(layout.image(1))[:3], before)
    assert unfinished(out) == []


def test_a_folder_holding_another_store_is_refused(tmp_path, both_towers):
    shards = make_shards(tmp_path / "shards", n_shards=2, per_shard=2)
    _embed(shards, tmp_path / "store", both_towers)
    with pytest.raises(ClipforgeError, match="dtype"):
        _embed(shards, tmp_path / "store", both_towers, dtype="float32")
    with pytest.raises(ClipforgeError, match="shards"):
        _embed(shards[:1], tmp_path / "store", both_towers)
    with pytest.raises(ClipforgeError, match="float16 .* or float32"):
        _embed(shards, tmp_path / "elsewhere", both_towers, dtype="int8")


def test_unfinished_shard_is_never_read(tmp_path, both_towers):
    shards = make_shards(tmp_path / "shards", n_shards=3, per_shard=2)
    out = tmp_path / "store"
    _embed(shards, out, both_towers)
    layout = StoreLayout(out, 3)
    layout.done(2).unlink()                       # arrays of shard 2 are there, its commit record is not
    with pytest.raises(ClipforgeError, match="1 unfinished shard"):
        FeatureStore(out)
    leftover = layout.image(2).parent / f".tmp-{layout.image(2).stem}-dead.npy"
    leftover.write_bytes(b"\x93NUMPY half")       # what a killed writer leaves
    summary = _embed(shards, out, both_towers)
    assert summary.computed == [2] and not leftover.exists()
    assert FeatureStore(out).n == 6


def test_store_is_readable_without_its_input_shards(tmp_path, both_towers):
    shards = make_shards(tmp_path / "shards", n_shards=2, per_shard=2)
    _embed(shards, tmp_path / "store", both_towers)
    (tmp_path / "store").rename(tmp_path / "moved")
    for s in shards:
        s.unlink()
    store = FeatureStore(tmp_path / "moved")
    assert store.n == 4 and store.read(1, 0, 2)[0].shape == (2, both_towers[0].dim)


def test_images_only_store_and_learned_towers(tmp_path, both_towers):
    shards = make_shards(tmp_path / "shards", n_shards=1, per_shard=2)
    embed_to_store([str(shards[0])], tmp_path / "img", both_towers[0], None, backend="off")
    assert not (tmp_path / "img" / "text_emb").exists()
    store = FeatureStore(tmp_path / "img")
    assert store.read(0, 0, 2)[1] is None and json.loads((tmp_path / "img" / "store.json").read_text())["text_tower"] is None
    from clipforge.towers import build_tower
    with pytest.raises(ClipforgeError, match="pretrained tower"):
        embed_to_store([str(shards[0])], tmp_path / "s", build_tower("scratch:cnn-tiny", "image"), None, backend="off")


def test_overflowing_float16_features_are_an_error_not_inf(tmp_path, both_towers, monkeypatch):
    shards = make_shards(tmp_path / "shards", n_shards=1, per_shard=2)
    monkeypatch.setattr(type(both_towers[0]), "encode", lambda self, items, batch_size=64: np.full((len(items), self.dim), 1e6, np.float32))
    with pytest.raises(ClipforgeError, match="float32"):
        _embed(shards, tmp_path / "store", both_towers)
    assert not (tmp_path / "store" / "done").exists() or not any((tmp_path / "store" / "done").iterdir())
