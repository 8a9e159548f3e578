"""The gauntlet, part 2: bad configs, arguments and checkpoints give one red line, exit code 2, nothing half done.

``CLI_PROBLEMS`` lists the kinds; docs/robustness.md has each with what the user sees.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from captionutil import COLOURS, SHAPES, draw
from clipforge.cli import app
from gauntletutil import grey_png, missing_from_robustness_doc

# a class folder of files that all fail to decode (truncated, empty, text and HTML under image names)
BROKEN = {"truncated.png": grey_png(64, 64)[:60], "empty.jpg": b"", "notes.jpg": b"not an image, just notes\n",
          "403.png": b"<html><body>403 Forbidden</body></html>"}


# -- configs, arguments and checkpoints: one red line, exit code 2, nothing half done ---------------------------

class _Touch:
    """Unpickling this creates a file: a stand-in for the code a crafted checkpoint could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _class_folder(root: Path, n_classes: int = 3, per_class: int = 3) -> Path:
    for c in range(n_classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            draw(SHAPES[c % 3], list(COLOURS)[k % 4], 10 * c + k).save(d / f"ok-{k}.png")
    return root


def _align(tmp: Path, folder: Path, *sets: str) -> list[str]:
    return ["align", "--quiet", *[a for s in [f"data.source=folder:{folder}", "data.n_unseen=1", "towers.image_size=32",
                                              "train.epochs=2", "train.ensemble=1", "train.checkpoint_every=1",
                                              f"out={tmp / 'run'}", f"cache_dir={tmp / 'cache'}", *sets]
                                  for a in ("-s", s)]]


def _case(kind: str, tmp: Path) -> tuple[list[str], str]:
    """-> (argv, what the one error line must say) for a CLI kind, its files written under ``tmp``."""
    if kind == "config file not UTF-8":
        (tmp / "latin1.yaml").write_bytes("train:\n  epochs: 3  # caf\xe9\n".encode("latin-1"))
        return ["align", "-c", str(tmp / "latin1.yaml")], "not UTF-8"
    if kind == "a directory given as a config":
        return ["train", "-c", str(tmp)], "is a directory"
    if kind == "true for an integer (epochs: true)":
        (tmp / "bool.yaml").write_text("train:\n  epochs: true\n")
        return ["align", "-c", str(tmp / "bool.yaml")], "'train.epochs': Value error, needs a number"
    if kind == "infinite learning rate (train.lr=inf)":
        return ["align", "-s", "train.lr=inf"], "'train.lr': Input should be a finite number"
    if kind == "learning rate that overflows (train.lr=1e308)":
        return ["train", "-s", "train.lr=1e308"], "'train.lr': Input should be less than or equal to 10"
    if kind == "NaN for a float (train.weight_decay=.nan)":
        return ["align", "-s", "train.weight_decay=.nan"], "'train.weight_decay': Input should be a finite number"
    if kind == "as many unseen classes as classes (data.n_unseen)":
        return _align(tmp, _class_folder(tmp / "classes"), "data.n_unseen=3"), "'data.n_unseen': 3 unseen of 3 classes"
    if kind == "missing local directory as a tower (towers.text=hf:/nonexistent/dir)":
        return (_align(tmp, _class_folder(tmp / "classes"), "towers.text=hf:/nonexistent/dir"),
                "the local directory '/nonexistent/dir' does not exist")
    if kind == "a folder of only broken images":
        for i, (name, data) in enumerate(BROKEN.items()):
            d = tmp / "broken" / f"class{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)
        return _align(tmp, tmp / "broken"), "no usable training images"
    if kind == "serve port out of range (--port 99999)":
        return ["serve", str(tmp / "idx"), "--port", "99999"], "--port 99999 is not a TCP port"
    if kind == "negative upload limit (serve --max-upload-mb -1)":
        return ["serve", str(tmp / "idx"), "--max-upload-mb", "-1"], "--max-upload-mb must be a positive"
    if kind == "empty text query (index search IDX '')":
        return ["index", "search", str(tmp / "idx"), " "], "the text QUERY is empty"
    if kind in ("crafted checkpoint (code in the pickle)", "truncated checkpoint, no earlier one", "garbage checkpoint"):
        ckpt = tmp / "run" / "checkpoints"
        ckpt.mkdir(parents=True)
        if kind.startswith("crafted"):
            torch.save({"model": {}, "opt": {}, "sched": {}, "state": _Touch(tmp / "pwned"), "rng": {}}, ckpt / "last.pt")
            want = "holds Python objects other than tensors"
        else:
            buf = io.BytesIO()
            torch.save({"model": {"w": torch.zeros(1000)}}, buf)
            (ckpt / "last.pt").write_bytes(buf.getvalue()[:300] if kind.startswith("truncated") else os.urandom(3000))
            want = "cannot be read"
        return [*_align(tmp, _class_folder(tmp / "classes")), "--resume"], want
    raise KeyError(kind)


CLI_PROBLEMS = ("config file not UTF-8", "a directory given as a config", "true for an integer (epochs: true)",
                "infinite learning rate (train.lr=inf)", "learning rate that overflows (train.lr=1e308)",
                "NaN for a float (train.weight_decay=.nan)", "as many unseen classes as classes (data.n_unseen)",
                "missing local directory as a tower (towers.text=hf:/nonexistent/dir)", "a folder of only broken images",
                "serve port out of range (--port 99999)", "negative upload limit (serve --max-upload-mb -1)",
                "empty text query (index search IDX '')", "crafted checkpoint (code in the pickle)",
                "truncated checkpoint, no earlier one", "garbage checkpoint")


@pytest.mark.parametrize("kind", CLI_PROBLEMS)
def test_bad_configs_arguments_and_checkpoints_are_one_clear_line(kind, tmp_path):
    argv, want = _case(kind, tmp_path)
    r = CliRunner().invoke(app, argv)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1 and want in errors[0], (kind, r.output, repr(r.exception))
    assert "Traceback" not in r.output and "huggingface" not in r.output.lower(), r.output
    assert not (tmp_path / "pwned").exists(), "a crafted checkpoint ran code"
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "results.json").exists()


def test_every_cli_kind_is_listed_in_the_robustness_doc():
    assert not missing_from_robustness_doc(CLI_PROBLEMS)
