"""data/prompts.py: the one place labels become prompts (language rule, article rule, --templates, label lists)."""
import pytest

from clipforge.data.descriptions import DEFAULT_TEMPLATES, from_templates
from clipforge.data.prompts import (EN_TEMPLATES, ZH_TEMPLATES, fill, language_of, parse_templates, prompts,
                                    split_labels, templates_for)
from clipforge.data.templates_zh import FASHION_MNIST_ZH
from clipforge.errors import ConfigError


@pytest.mark.parametrize("template,name,expected", [
    ("a photo of a {}.", "a cat", "a photo of a cat."),
    ("a photo of a {}.", "an apple", "a photo of an apple."),
    ("a photo of the {}.", "an apple", "a photo of an apple."),
    ("a photo of a {}.", "the Eiffel Tower", "a photo of the Eiffel Tower."),
    ("a photo of the {}.", "a cat", "a photo of a cat."),
    ("A {}.", "an apple", "An apple."),                       # the template's capital is kept
    ("a {}.", "An Apple", "An Apple."),
    ("a photo of {}.", "the Eiffel Tower", "a photo of the Eiffel Tower."),   # no article before {}: name as is
    ("{}", "a cat", "a cat"),
    ("a photo of a {}.", "T-shirt/top", "a photo of a T-shirt/top."),     # no article in the name: unchanged
    ("a photo of a {}.", "A-line skirt", "a photo of a A-line skirt."),   # 'A-' is not an article
    ("a photo of a {}.", "apple", "a photo of a apple."),     # article-free names are never rewritten
    ("a photo of a {}.", "theatre", "a photo of a theatre."),
    ("a photo of a {}.", "a", "a photo of a a."),             # the letter a is a name, not an article
    ("一张{}的照片。", "猫", "一张猫的照片。"),
    ("一张{}的照片。", "T恤", "一张T恤的照片。"),
    ("a photo of a {}.", "埃菲尔铁塔", "a photo of a 埃菲尔铁塔."),
    ("data {} here", "a cat", "data a cat here"),             # 'data' ends in 'a' but is not an article
])
def test_fill_never_doubles_an_article(template, name, expected):
    assert fill(template, name) == expected


def test_no_default_prompt_doubles_an_article():
    for name in ("a cat", "an apple", "the Eiffel Tower", "A dog", "The Beatles"):
        for p in prompts(name):
            words = p.lower().rstrip(".").split()
            pairs = list(zip(words, words[1:]))
            assert not any(a in ("a", "an", "the") and b in ("a", "an", "the") for a, b in pairs), p
    assert from_templates(["a cat"]).sentences[0][0] == "a photo of a cat."


def test_article_free_names_fill_exactly_as_str_format():
    """Benchmarks build prompts from article-free class names: their prompts must stay byte-identical."""
    names = ["T-shirt/top", "Trouser", "Ankle boot", "airplane", "apple", "0", "line"] + FASHION_MNIST_ZH
    for t in EN_TEMPLATES + ZH_TEMPLATES:
        for n in names:
            assert fill(t, n) == t.format(n)


def test_the_language_rule_chinese_names_get_chinese_templates():
    assert DEFAULT_TEMPLATES == EN_TEMPLATES
    assert templates_for("猫") == ZH_TEMPLATES and templates_for("cat") == EN_TEMPLATES
    assert templates_for("T恤") == ZH_TEMPLATES and templates_for("T-shirt/top") == EN_TEMPLATES
    assert (language_of("埃菲尔铁塔"), language_of("Eiffel Tower"), language_of("café")) == ("zh", "en", "en")
    d = from_templates(["猫", "a dog"])
    assert d.sentences[0] == [t.format("猫") for t in ZH_TEMPLATES]
    assert d.sentences[1][0] == "a photo of a dog." and len(d.sentences[1]) == len(EN_TEMPLATES)
    given = from_templates(["猫", "dog"], ["a {}"])    # an explicit list applies to every class
    assert given.sentences == [["a 猫"], ["a dog"]]


def test_parse_templates_file_inline_lists_and_errors(tmp_path):
    assert parse_templates(None) is None and parse_templates("  ") is None
    f = tmp_path / "t.txt"
    f.write_text("# my prompts\na photo of a {}, a kind of shape.\n\n  a drawing of a {}.  \n一张{}的照片。\n",
                 encoding="utf-8")
    assert parse_templates(str(f)) == ["a photo of a {}, a kind of shape.", "a drawing of a {}.", "一张{}的照片。"]
    assert parse_templates("a photo of a {}., a {}") == ["a photo of a {}.", "a {}"]
    assert parse_templates("a {}, seen from above|一个{}") == ["a {}, seen from above", "一个{}"]   # '|' wins over ','
    with pytest.raises(ConfigError, match=r"--templates.*must contain '\{\}'.*'nope'"):
        parse_templates("a photo of a {},nope")
    with pytest.raises(ConfigError, match="--templates: 'missing.txt' is neither an existing file"):
        parse_templates("missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.txt.*must contain"):
        parse_templates(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="at least one template"):
        parse_templates(str(empty))


def test_split_labels_is_shared_by_the_cli_and_the_service():
    assert split_labels("cat, dog;猫，狗、鸟\n  big   cat ,cat") == ["cat", "dog", "猫", "狗", "鸟", "big cat"]
    assert split_labels(" , ;") == [] and split_labels(None) == []
