import pytest
from typer.testing import CliRunner

from clipforge.cli import app
from clipforge.config import RunConfig, load_config
from clipforge.errors import ConfigError


def test_defaults_and_override():
    cfg = load_config(None, ["train.lr=0.003", "head.kind=mlp", "data.unseen=[Bag, Coat]"])
    assert isinstance(cfg, RunConfig)
    assert cfg.train.lr == 0.003 and cfg.head.kind == "mlp" and cfg.data.unseen == ["Bag", "Coat"]


def test_yaml_file_then_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\nhead:\n  embed_dim: 64\n")
    cfg = load_config(f, ["train.epochs=9"])
    assert cfg.train.epochs == 9 and cfg.head.embed_dim == 64


def test_unknown_field_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config field 'train\.lerning_rate'"):
        load_config(f)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'train\.epochs'"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"'head\.kind'"):
        load_config(None, ["head.kind=transformer"])


def test_bad_file_and_bad_override():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/c.yaml")
    with pytest.raises(ConfigError, match="field.path=value"):
        load_config(None, ["train.lr"])


def test_cli_prints_one_clear_error_line():
    r = CliRunner().invoke(app, ["align", "--set", "train.lerning_rate=1"])
    assert r.exit_code == 2
    out = r.output.strip().splitlines()
    assert len(out) == 1 and "train.lerning_rate" in out[0] and "Traceback" not in r.output


# -- strict numbers, files that are not configs, packaged names (issues 16 and 17) ----------------------------------

@pytest.mark.parametrize("override, field, says", [
    ("train.epochs=true", "train.epochs", "needs a number, not true/false"),       # lax pydantic read it as 1
    ("train.lr=false", "train.lr", "needs a number, not true/false"),
    ("data.train_per_class=true", "data.train_per_class", "needs a number"),       # int | None too
    ("train.lr=inf", "train.lr", "finite number"),
    ("train.lr=.inf", "train.lr", "finite number"),
    ("train.lr=1e308", "train.lr", "less than or equal to 10"),                    # finite, but overflows float32 AdamW
    ("train.weight_decay=.nan", "train.weight_decay", "finite number"),
    ("head.init_temperature=-.inf", "head.init_temperature", "finite number"),
    ("train.lr=0", "train.lr", "greater than 0"),
])
def test_numbers_are_strict_and_finite(override, field, says):
    with pytest.raises(ConfigError, match=rf"'{field}': .*{says}"):
        load_config(None, [override])


def test_bool_in_a_yaml_file_is_an_error_naming_the_field(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: true\n")
    with pytest.raises(ConfigError, match=r"'train\.epochs'.*not true/false"):
        load_config(f)


def test_numbers_written_as_yaml_strings_still_work(tmp_path):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: overrides and files must keep working with it."""
    cfg = load_config(None, ["train.lr=1e-3", "train.epochs=3", "train.weight_decay=0"])
    assert cfg.train.lr == 1e-3 and cfg.train.epochs == 3 and cfg.train.weight_decay == 0.0
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 5e-4\n  epochs: 4\n")
    assert load_config(f).train.lr == 5e-4


def test_a_config_that_is_a_directory_or_not_utf8_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    f = tmp_path / "latin1.yaml"
    f.write_bytes("train:\n  epochs: 3   # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as err:
        load_config(f)
    assert "\n" not in str(err.value)


def test_load_config_knows_packaged_names_and_picks_the_class():
    from clipforge.config import PACKAGED, CaptionEvalConfig, CaptionRunConfig
    from clipforge.pipelines.distill import DistillConfig
    assert isinstance(load_config("caption-train"), CaptionRunConfig)
    assert isinstance(load_config("caption-train.yaml", ["train.epochs=3"]), CaptionRunConfig)
    assert isinstance(load_config("siglip"), CaptionRunConfig) and load_config("siglip").loss.kind == "siglip"
    assert isinstance(load_config(PACKAGED / "lit-text.yaml"), CaptionRunConfig)       # by path, no cls= needed
    assert isinstance(load_config("caption-eval"), CaptionEvalConfig)
    assert isinstance(load_config("distill"), DistillConfig)
    assert isinstance(load_config(None, ["train.lr=0.1"]), RunConfig)                    # as before
    assert isinstance(load_config(None, ["data.fold=1"]), CaptionRunConfig)


def test_cls_still_overrides_the_pick(tmp_path):
    from clipforge.config import CaptionRunConfig
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\n")
    assert isinstance(load_config(f), RunConfig)
    assert isinstance(load_config(f, cls=CaptionRunConfig), CaptionRunConfig)
    with pytest.raises(ConfigError, match=r"unknown config field 'data\.fold'"):
        load_config("caption-train", cls=RunConfig)


def test_unseen_classes_must_leave_a_class_to_train_on():
    from clipforge.data.splits import seen_unseen
    names = [f"c{i}" for i in range(10)]
    assert len(seen_unseen(names, 9)[0]) == 1
    for n in (10, 11):
        with pytest.raises(ConfigError, match=rf"'data\.n_unseen': {n} unseen of 10 classes .* use 1 to 9"):
            seen_unseen(names, n)
    with pytest.raises(ConfigError, match=r"'data\.unseen'"):
        seen_unseen(names[:3], 1, unseen_names=names[:3])
