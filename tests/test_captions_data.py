"""Caption CSVs and the Tux Paint source: bad rows are skipped with their line numbers, never fatal."""
from pathlib import Path

import pytest

from clipforge.data.captions import folds, load_caption_csv, load_caption_source
from clipforge.data.tux_paint import load_tux_paint, parse_stamp_text
from clipforge.errors import ClipforgeError

from captionutil import make_caption_set


def test_good_csv_groups_captions_per_image(tmp_path):
    csv = make_caption_set(tmp_path, copies=1)
    ds = load_caption_csv(csv)
    assert len(ds) == 12 and all(len(c) == 2 for c in ds.captions)
    assert ds.captions[0] == ["a red circle", "a circle, coloured red"]  # quoted comma kept
    texts, owner = ds.pairs()
    assert len(texts) == 24 and list(owner[:4]) == [0, 0, 1, 1]
    assert len(ds.skipped) == 0


def test_bad_rows_are_skipped_with_line_numbers(tmp_path):
    csv = make_caption_set(tmp_path, copies=1)
    good = csv.read_bytes()
    bad = (b"filename,caption,source\n"                              # an extra header column is fine
           b"red_circle_0.png,a red circle,web\n"                     # line 2: good
           b"missing.png,a ghost,web\n"                               # line 3: file missing
           b"green_square_0.png,,web\n"                               # line 4: empty caption
           b"blue_triangle_0.png,caf\xe9 latin-1,web\n"               # line 5: not UTF-8
           b"yellow_circle_0.png,a yellow circle,web,extra,fields\n"  # line 6: too many fields
           b"\n"                                                      # line 7: blank, ignored
           b"red_square_0.png,a red square,web\n")                    # line 8: good
    csv.write_bytes(bad)
    ds = load_caption_csv(csv)
    assert [p.name for p in ds.paths] == ["red_circle_0.png", "red_square_0.png"]
    reasons = dict(ds.skipped.items)
    assert "captions.csv:4" in reasons and "empty caption" in reasons["captions.csv:4"]
    assert "captions.csv:5" in reasons and "UTF-8" in reasons["captions.csv:5"]
    assert "captions.csv:6" in reasons and "fields" in reasons["captions.csv:6"]
    assert any("missing.png" in k and "not found" in v for k, v in reasons.items())
    assert len(ds.skipped) == 4
    assert ds.captions == [["a red circle"], ["a red square"]]       # the good rows are read whole, extra column ignored
    csv.write_bytes(good)                                            # the same images with the original rows: nothing skipped,
    ds = load_caption_csv(csv)                                       # so the skips above come from the bad rows alone
    assert len(ds) == 12 and len(ds.skipped) == 0


def test_missing_required_column_is_one_clear_error(tmp_path):
    (tmp_path / "captions.csv").write_text("file,text\na.png,a cat\n")
    with pytest.raises(ClipforgeError) as e:
        load_caption_csv(tmp_path / "captions.csv")
    msg = str(e.value)
    assert "'filename'" in msg and "'caption'" in msg and "header" in msg and "\n" not in msg


def test_source_specs(tmp_path):
    csv = make_caption_set(tmp_path, copies=1)
    assert len(load_caption_source(f"csv:{csv}")) == 12
    assert len(load_caption_source(f"captions:{tmp_path}")) == 12
    with pytest.raises(ClipforgeError, match="unknown caption source"):
        load_caption_source("nope")


def test_folds_partition_and_are_fixed():
    fs = folds(785, 5, 0)
    joined = sorted(i for f in fs for i in f)
    assert joined == list(range(785)) and [len(f) for f in fs] == [157] * 5
    assert all((a == b).all() for a, b in zip(fs, folds(785, 5, 0)))


def test_stamp_text_parsing():
    en, tr = parse_stamp_text("A frog.\nach.utf8=Ogwal.\nzh_CN.utf8=青蛙。\n")
    assert en == "A frog." and tr["zh_CN"] == "青蛙。" and tr["ach"] == "Ogwal."


def test_tux_paint_source_skips_mirrors_and_uncaptioned():
    ds = load_tux_paint()
    assert len(ds) == 785                       # the packaged set: 785 captioned PNGs
    assert not any("_mirror" in p.name for p in ds.paths)
    assert all(len(c) == 1 and c[0] for c in ds.captions)
    zh = ds.in_language("zh")
    assert 600 < len(zh) < 785 and all(c for c in zh.captions)


def test_tux_paint_layout_skips_mirrors_and_reports_uncaptioned_stamps(tmp_path):
    """A stamps tree built here: the packaged one may or may not hold uncaptioned PNGs, depending on the release."""
    from PIL import Image
    d = tmp_path / "stamps" / "animals"
    d.mkdir(parents=True)
    for name in ("frog", "frog_mirror", "cat", "dog", "owl"):
        Image.new("RGBA", (8, 8), (0, 128, 0, 255)).save(d / f"{name}.png")
    (d / "frog.txt").write_text("A frog.\nzh_CN.utf8=青蛙。\n", encoding="utf-8")
    (d / "frog_mirror.txt").write_text("A frog.\n", encoding="utf-8")
    (d / "dog.txt").write_bytes("A dog, caf\xe9.\n".encode("latin-1"))
    (d / "owl.txt").write_text("zh_CN.utf8=猫头鹰。\n", encoding="utf-8")
    ds = load_tux_paint(tmp_path / "stamps")
    assert [p.name for p in ds.paths] == ["frog.png"] and ds.captions == [["A frog."]]
    assert ds.in_language("zh").captions == [["青蛙。"]]
    reasons = {k.rsplit("/", 1)[-1]: v for k, v in ds.skipped.items}
    assert set(reasons) == {"cat.png", "dog.txt", "owl.txt"}
    assert "no caption file" in reasons["cat.png"] and "UTF-8" in reasons["dog.txt"]
    assert "no English caption" in reasons["owl.txt"]


def _tgz(path, files: dict):
    import io
    import tarfile
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_emoji_source_from_npm_tarballs(tmp_path):
    import io
    import json

    from PIL import Image

    from clipforge.data.emoji import load_emoji
    png = io.BytesIO()
    Image.new("RGBA", (64, 64), (255, 200, 0, 255)).save(png, "PNG")
    entries = [{"name": "GRINNING FACE", "unified": "1F600", "image": "1f600.png", "has_img_google": True, "sort_order": 1},
               {"name": "RED HEART", "unified": "2764-FE0F", "image": "2764-fe0f.png", "has_img_google": True, "sort_order": 2},
               {"name": "NO PICTURE", "unified": "1F601", "image": "1f601.png", "has_img_google": False, "sort_order": 3}]
    images = _tgz(tmp_path / "img.tgz", {"package/emoji.json": json.dumps(entries).encode(),
                                         "package/img/google/64/1f600.png": png.getvalue(),
                                         "package/img/google/64/2764-fe0f.png": png.getvalue(),
                                         "package/img/google/sheets/x.png": b"not wanted"})
    zh = _tgz(tmp_path / "zh.tgz", {"package/zh/data.json": json.dumps(
        [{"hexcode": "1F600", "label": "嘿嘿"}, {"hexcode": "2764", "label": "红心"}]).encode()})
    ds = load_emoji(tmp_path / "unpacked", images, zh)
    assert ds.captions == [["grinning face"], ["red heart"]]
    assert ds.translations["zh"] == [["嘿嘿"], ["红心"]]          # FE0F ignored when matching
    assert len(ds.skipped) == 1 and "no 64-px" in ds.skipped.items[0][1]
    assert not (tmp_path / "unpacked" / "x.png").exists()


def test_packaged_emoji_set():
    ds = load_caption_source("emoji")
    assert len(ds) == 1911 and ds.captions[0] == ["grinning face"]     # the packaged set: 1,911 images
    assert len(ds.in_language("zh")) > 1800


def _unclosed_quote_csv(root):
    csv = make_caption_set(root, copies=1)
    csv.write_bytes(b"filename,caption\n"
                    b"red_circle_0.png,a red circle\n"                           # line 2: good
                    b'red_square_0.png,"a red square whose quote is left open\n'  # line 3: the open quote
                    b"green_circle_0.png,a green circle\n"                       # line 4: a row of its own
                    b'blue_square_0.png,"a blue square, quoted"\n'               # line 5: a quote that would close it
                    b'yellow_circle_0.png,"a yellow circle,\n'                   # line 6: a caption on two lines ...
                    b'round and yellow"\n')                                      # ... line 7
    return csv


def test_a_quote_left_open_is_reported_and_the_next_row_is_still_read(tmp_path):
    """The quote opened on line 3 ends where line 4 begins a row (an existing file, a comma): line 3 is reported,
    line 4 and every later row are read (before, line 4 and half of line 5 became line 3's caption, unreported)."""
    ds = load_caption_csv(_unclosed_quote_csv(tmp_path))
    caps = {p.name: c for p, c in zip(ds.paths, ds.captions)}
    assert caps == {"red_circle_0.png": ["a red circle"], "green_circle_0.png": ["a green circle"],
                    "blue_square_0.png": ["a blue square, quoted"],
                    "yellow_circle_0.png": ["a yellow circle, round and yellow"]}     # multi-line captions still work
    reasons = dict(ds.skipped.items)
    assert list(reasons) == ["captions.csv:3"] and "never closed before the next row (line 4)" in reasons["captions.csv:3"]


def test_the_index_csv_reader_ends_an_open_quote_the_same_way(tmp_path):
    from clipforge.index.sources import list_source
    items, problems = list_source(_unclosed_quote_csv(tmp_path))
    names = {Path(it.path).name: it.caption for it in items}
    assert names == {"red_circle_0.png": "a red circle", "green_circle_0.png": "a green circle",
                     "blue_square_0.png": "a blue square, quoted", "yellow_circle_0.png": "a yellow circle, round and yellow"}
    assert [item for item, _ in problems] == ["captions.csv:3"]
