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
