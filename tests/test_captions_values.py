"""CaptionDataset's views (subset, languages, pairs, fingerprint), source specs and the CSV reader's messages, each
against values written out here. Found by the mutation run (scripts/mutation.sh)."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from clipforge.data import captions as cap
from clipforge.data.captions import CaptionDataset, folds, load_caption_csv, load_caption_source
from clipforge.data.dataset import SkipReport
from clipforge.errors import ClipforgeError


def _ds():
    report = SkipReport()
    report.add("x.csv:9", "a reason")
    return CaptionDataset("toy", [Path("/a.png"), Path("/b.png"), Path("/c.png")],
                          [["a cat"], ["a dog", "a hound"], ["a bird"]],
                          {"zh": [["猫"], [], ["鸟", "a bird"]]}, report)


def test_subset_keeps_name_report_and_every_language():
    ds = _ds()
    sub = ds.subset(np.array([2, 0]))
    assert sub.name == "toy" and sub.skipped is ds.skipped
    assert sub.paths == [Path("/c.png"), Path("/a.png")] and sub.captions == [["a bird"], ["a cat"]]
    assert sub.translations == {"zh": [["鸟", "a bird"], ["猫"]]}


def test_captions_in_a_language_and_a_mix():
    ds = _ds()
    for lang in ("en", "", "default"):
        assert ds.captions_in(lang) == ds.captions
    assert ds.captions_in("zh") == [["猫"], [], ["鸟", "a bird"]]
    assert ds.captions_in("en+zh") == [["a cat", "猫"], ["a dog", "a hound"], ["a bird", "鸟"]]   # duplicates once
    with pytest.raises(ClipforgeError) as e:
        ds.captions_in("en+fr")
    assert str(e.value) == "dataset 'toy' has no 'fr' captions; it has: ['zh']"
    plain = CaptionDataset("plain", [Path("/a.png")], [["x"]])
    with pytest.raises(ClipforgeError) as e:
        plain.captions_in("zh")
    assert str(e.value) == "dataset 'plain' has no 'zh' captions; it has: none"


def test_in_language_drops_images_without_a_caption_in_it():
    ds = _ds()
    assert ds.in_language("en") is ds and ds.in_language("default") is ds and ds.in_language("") is ds
    zh = ds.in_language("zh")
    assert zh.name == "toy[zh]" and zh.paths == [Path("/a.png"), Path("/c.png")]
    assert zh.captions == [["猫"], ["鸟", "a bird"]] and zh.translations == {"zh": [["猫"], ["鸟", "a bird"]]}
    assert zh.skipped is ds.skipped
    mix = ds.in_language("en+zh")
    assert mix.name == "toy[en+zh]" and len(mix) == 3
    # a dataset whose 'en' captions are a translation (the default language is another one) uses them
    other = CaptionDataset("de", [Path("/a.png"), Path("/b.png")], [["Katze"], ["Hund"]], {"en": [["cat"], []]})
    en = other.in_language("en")
    assert en.name == "de[en]" and en.captions == [["cat"]] and en.paths == [Path("/a.png")]


def test_pairs_list_every_caption_with_its_image_as_int64():
    texts, owner = _ds().pairs()
    assert texts == ["a cat", "a dog", "a hound", "a bird"]
    assert owner.tolist() == [0, 1, 1, 2] and owner.dtype == np.int64
    _, none = CaptionDataset("e", [], []).pairs()
    assert none.dtype == np.int64 and len(none) == 0


def test_fingerprint_is_name_path_size_and_mtime(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"12345")
    gone = tmp_path / "gone.png"
    ds = CaptionDataset("toy", [img, gone], [["a"], ["b"]])
    st = img.stat()
    h = hashlib.sha256(b"toy")
    h.update(f"{img}|5|{st.st_mtime_ns}".encode())
    h.update(f"{gone}|-1|-1".encode())
    assert ds.fingerprint() == h.hexdigest()[:16]
    assert CaptionDataset("other", [img, gone], [["a"], ["b"]]).fingerprint() != ds.fingerprint()


def test_folds_default_to_five_from_seed_zero():
    order = np.random.RandomState(0).permutation(12)
    want = [np.sort(order[i::5]) for i in range(5)]
    got = folds(12)
    assert len(got) == 5 and all(np.array_equal(a, b) for a, b in zip(got, want))


def test_source_specs_reach_the_right_loader(tmp_path, monkeypatch):
    import clipforge.data.emoji as emoji
    import clipforge.data.tux_paint as tux
    calls = []
    monkeypatch.setattr(tux, "load_tux_paint", lambda root: calls.append(("tux", root)) or "tux")
    monkeypatch.setattr(emoji, "load_emoji", lambda root: calls.append(("emoji", root)) or "emoji")
    assert load_caption_source("tux-paint") == "tux" and load_caption_source("tux-paint:/stamps") == "tux"
    assert load_caption_source("emoji") == "emoji" and load_caption_source("emoji:/e:x") == "emoji"
    assert calls == [("tux", None), ("tux", "/stamps"), ("emoji", None), ("emoji", "/e:x")]
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "my.csv").write_text("filename,caption\na.png,a cat\n")
    ds = load_caption_source(str(tmp_path / "my.csv"))
    assert ds.name == "my" and ds.captions == [["a cat"]]
    with pytest.raises(ClipforgeError) as e:
        load_caption_source("tux")
    assert str(e.value) == ("unknown caption source 'tux': use tux-paint, emoji, csv:<file.csv> or "
                            "captions:<dir with captions.csv and images/>")


def test_csv_reader_messages_and_images_folder(tmp_path):
    with pytest.raises(ClipforgeError) as e:
        load_caption_csv(tmp_path / "none.csv")
    assert str(e.value) == f"caption CSV '{tmp_path / 'none.csv'}' does not exist"
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(ClipforgeError) as e:
        load_caption_csv(tmp_path / "empty.csv")
    assert str(e.value) == f"caption CSV '{tmp_path / 'empty.csv'}' is empty; it needs a header line 'filename,caption'"
    (tmp_path / "cols.csv").write_text("name,text\n")
    with pytest.raises(ClipforgeError) as e:
        load_caption_csv(tmp_path / "cols.csv")
    assert "has no column 'filename' or 'caption' (header: ['name', 'text'])" in str(e.value)
    (tmp_path / "a.png").write_bytes(b"")                                # no images/ folder: the CSV's own
    (tmp_path / "rows.csv").write_text("filename,caption\n"
                                       "a.png,one,two\n"                 # line 2: too many fields
                                       " ,a ghost\n"                     # line 3: empty filename
                                       "a.png,a cat\n")                  # line 4: good, after the bad ones
    ds = load_caption_csv(tmp_path / "rows.csv")
    assert ds.name == "rows" and ds.paths == [(tmp_path / "a.png").resolve()] and ds.captions == [["a cat"]]
    assert ds.skipped.items[1] == ("rows.csv:3", "empty filename") and ds.skipped.items[0][0] == "rows.csv:2"
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "b.png").write_bytes(b"")
    (tmp_path / "sub.csv").write_text("filename,caption\nb.png,a bee\n")
    assert load_caption_csv(tmp_path / "sub.csv").paths == [(tmp_path / "images" / "b.png").resolve()]
    assert cap.MAX_ROW_LINES == 50
