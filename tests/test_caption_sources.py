"""``data.source`` as a list: several caption sets trained as one (the general model's Tux Paint + emoji)."""
import pytest

from clipforge.config import CaptionRunConfig, load_config
from clipforge.errors import ClipforgeError
from clipforge.pipelines.caption_data import load_sources
from captionutil import make_caption_set, make_stamp_folder


def test_a_list_of_sources_is_one_set_with_every_language(tmp_path):
    csv = make_caption_set(tmp_path / "shapes", copies=1)          # 12 images, English only, 2 captions each
    stamps = make_stamp_folder(tmp_path / "tux", copies=1)         # 9 stamps, English + zh_CN
    one = load_sources([f"csv:{csv}"])
    two = load_sources([f"csv:{csv}", f"tux-paint:{stamps}"])
    assert len(one) == 12 and len(two) == 12 + 9
    assert two.paths[:12] == one.paths and two.captions[:12] == one.captions
    zh = two.captions_in("zh")
    assert all(c == [] for c in zh[:12]) and all(len(c) == 1 and "的" in c[0] for c in zh[12:])
    mixed = two.in_language("en+zh")
    assert len(mixed) == 21                                         # English-only images keep their English captions
    assert two.fingerprint() != one.fingerprint()


def test_the_config_takes_a_list_and_refuses_an_empty_one(tmp_path):
    cfg = load_config(None, ["data.source=[tux-paint, emoji]"], cls=CaptionRunConfig)
    assert cfg.data.source == ["tux-paint", "emoji"]
    assert load_config("general", [], cls=CaptionRunConfig).data.source == ["tux-paint", "emoji"]
    with pytest.raises(ClipforgeError, match="data.source"):
        load_sources([])
