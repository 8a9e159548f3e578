"""bench transfer: near-duplicates of target images are left out of training (and counted), class labels become
words, and a tiny end-to-end run writes the JSON the docs describe (default first per target, a mean row, the
default/ConSE ratio)."""
import json
import shutil

import numpy as np

from benchmarks.transfer import DUPLICATE_COSINE, class_name, near_duplicates, ratio_of, run_transfer
from clipforge.data.tux_paint import stamp_category


def _unit(v):
    return v / np.linalg.norm(v)


def test_a_planted_duplicate_is_removed_and_a_merely_similar_image_kept():
    rng = np.random.RandomState(0)
    target = rng.randn(3, 16)
    t0 = _unit(target[0])
    o = _unit(rng.randn(16) - (rng.randn(16) @ t0) * t0)
    o = _unit(o - (o @ t0) * t0)                                 # a direction orthogonal to target 0
    train = rng.randn(6, 16)
    train[2] = 3.0 * target[1]                                   # the same image, brighter: cosine 1
    train[4] = 0.96 * t0 + np.sqrt(1 - 0.96 ** 2) * o            # cosine 0.96 with target 0: above 0.95
    train[5] = 0.94 * t0 + np.sqrt(1 - 0.94 ** 2) * o            # cosine 0.94: kept
    assert DUPLICATE_COSINE == 0.95
    got = near_duplicates(train, target)
    assert got.tolist() == [False, False, True, False, True, False]
    assert near_duplicates(train, target, threshold=0.93)[5]
    assert near_duplicates(train, target, chunk=1).tolist() == got.tolist()      # chunking changes nothing
    assert near_duplicates(np.zeros((0, 16)), target).shape == (0,)


def test_class_labels_become_words():
    assert class_name("Smileys & Emotion") == "smileys and emotion"
    assert class_name("face-smiling") == "face smiling"
    assert class_name("sky & weather") == "sky and weather"


def test_the_ratio_is_default_over_conse_per_metric():
    got = ratio_of({"acc1": 0.6, "acc5": 0.9, "mean_per_class_recall": 0.5}, {"acc1": 0.3, "acc5": 0.0})
    assert got == {"acc1": 2.0, "acc5": None, "mean_per_class_recall": None}


def test_stamp_category_is_the_first_folder_in_words(tmp_path):
    assert stamp_category(tmp_path / "animals" / "cats" / "cat.png", tmp_path) == "animals"
    assert stamp_category(tmp_path / "naturalforces" / "storm.png", tmp_path) == "natural forces"


def _sources(tmp_path):
    """Two stamp categories (shapes, triangles) and a CSV caption set with one stamp planted in it (and one
    undecodable and one missing image)."""
    from captionutil import make_caption_set, make_stamp_folder
    stamps = make_stamp_folder(tmp_path / "tux")
    (stamps / "triangles").mkdir()
    for f in sorted((stamps / "shapes").glob("*triangle*")):
        shutil.move(str(f), stamps / "triangles" / f.name)
    csv = make_caption_set(tmp_path / "cap", copies=1)
    planted = sorted((stamps / "triangles").glob("*.png"))[0]
    shutil.copy(planted, tmp_path / "cap" / "images" / "planted.png")
    (tmp_path / "cap" / "images" / "broken.png").write_bytes(b"not a png")       # skipped and reported, no crash
    with csv.open("a", encoding="utf-8") as f:
        f.write("planted.png,a planted stamp\nbroken.png,a broken file\nmissing.png,a file that is not there\n")
    return {"tux-paint": f"tux-paint:{stamps}", "emoji": f"csv:{csv}"}


def test_bench_transfer_end_to_end_on_a_tiny_set(tmp_path):
    methods = ["clipforge", "least-squares", "csa"]      # no ConSE and no bridge: 1000 ImageNet names cost 15 s
    path = run_transfer(tmp_path / "out", methods, ["towers.image_size=32", "train.epochs=2", "train.ensemble=1",
                                                    "bridge.alpha=0", f"cache_dir={tmp_path / 'cache'}"],
                        targets=["tux-paint-categories", "fashion-mnist"], limit=30, sources=_sources(tmp_path))
    res = json.loads(path.read_text())
    assert res["suite"] == "transfer" and [t["target"] for t in res["targets"]] == ["tux-paint-categories", "fashion-mnist"]
    tux, fashion = res["targets"]
    assert tux["trained_on"] == ["emoji"] and tux["class_names"] == ["shapes", "triangles"] and tux["n_images"] == 18
    assert tux["near_duplicates_removed"] == len(tux["near_duplicates_examples"]) >= 1
    assert any(e.endswith("planted.png") for e in tux["near_duplicates_examples"])
    assert tux["n_train_images"] == 13 - tux["near_duplicates_removed"]      # 12 shapes + the planted stamp
    assert fashion["trained_on"] == ["tux-paint", "emoji"] and fashion["n_classes"] == 10 and fashion["n_images"] == 30
    assert fashion["n_train_images"] + fashion["near_duplicates_removed"] == 18 + 13
    for t in (tux, fashion):
        assert [r["method"] for r in t["results"]] == methods
        for r in t["results"]:
            m = r["metrics"]
            assert 0.0 <= m["acc1"] <= 1.0 and 0.0 <= m["mean_per_class_recall"] <= 1.0
            assert (m["acc5"] is None) == (t["n_classes"] < 5)
            if m["acc5"] is not None:
                assert m["acc1"] <= m["acc5"]
    assert [r["method"] for r in res["results"]] == methods
    for row in res["results"]:
        per = [next(r["metrics"] for r in t["results"] if r["method"] == row["method"]) for t in (tux, fashion)]
        assert abs(row["metrics"]["acc1"] - np.mean([p["acc1"] for p in per])) < 1e-12
        assert abs(row["metrics"]["acc5"] - per[1]["acc5"]) < 1e-12           # only fashion has 5+ classes
    assert set(res["skipped"]) == {"tux-paint", "emoji"} and res["skipped"]["tux-paint"]["count"] == 0
    skipped = [item for item, _ in res["skipped"]["emoji"]["examples"]]
    assert res["skipped"]["emoji"]["count"] == 2 and any("broken.png" in i for i in skipped)
    assert any("missing.png" in i for i in skipped)
    assert res["ratio_default_to_conse"] is None                               # no ConSE row to divide by
