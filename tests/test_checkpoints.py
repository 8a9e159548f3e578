"""Checkpoints hold no code and fail clearly: a crafted ``last.pt`` never runs, a truncated or garbage one is one
error line or a fall-back to ``prev.pt``, ``--resume`` says what it resumed, and a diverged run saves nothing."""
from __future__ import annotations

import math
import pathlib

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.train.trainer import ParamGroup, Trainer


def _fit(out_dir, epochs, resume=False, stop_after=None, poison_at=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2))
    x = torch.randn(32, 4)
    y = (x[:, 0] > 0).long()
    trainer = Trainer(model, [ParamGroup("m", model, 0.05)], epochs, 2, out_dir, warmup_steps=2, progress=False,
                      tensorboard=False)

    class Stop(Exception):
        pass

    def on_epoch_end(epoch):
        if stop_after is not None and epoch == stop_after:
            raise Stop

    def on_step(step):
        if poison_at is not None and step == poison_at:
            with torch.no_grad():
                model[0].weight[0, 0] = math.nan        # what a far too large learning rate does

    def batches(epoch):
        perm = torch.randperm(32)                      # the global RNG: resume must restore it
        yield perm[:16]
        yield perm[16:]

    try:
        trainer.fit(batches, lambda idx: torch.nn.functional.cross_entropy(model(x[idx]), y[idx]),
                    resume=resume, on_epoch_end=on_epoch_end, on_step=on_step)
    except Stop:
        return None, trainer
    return model, trainer


class _Touch:
    """Unpickling this object creates a file: what a crafted checkpoint could do instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_checkpoints_load_with_the_safe_unpickler(tmp_path):
    _fit(tmp_path, 3)
    ck = torch.load(tmp_path / "last.pt", weights_only=True)        # no pickled objects: RNG states included
    assert ck["state"]["epoch"] == 3 and (tmp_path / "prev.pt").is_file()
    assert torch.load(tmp_path / "prev.pt", weights_only=True)["state"]["epoch"] == 2


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, capsys):
    _fit(tmp_path, 2, stop_after=1)
    marker = tmp_path / "pwned"
    ck = torch.load(tmp_path / "last.pt", weights_only=False)      # the attacker's side: any format will do
    ck["state"]["payload"] = _Touch(marker)
    torch.save(ck, tmp_path / "last.pt")
    with pytest.raises(Exception) as err:
        _fit(tmp_path, 2, resume=True)
    assert not marker.exists(), "unpickling the crafted checkpoint ran its code"
    assert isinstance(err.value, ClipforgeError) and "Python objects other than tensors" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_crafted_checkpoint_is_not_skipped_for_the_previous_one(tmp_path):
    _fit(tmp_path, 3, stop_after=2)
    marker = tmp_path / "pwned"
    torch.save({"model": _Touch(marker)}, tmp_path / "last.pt")
    with pytest.raises(Exception) as err:
        _fit(tmp_path, 3, resume=True)
    assert not marker.exists(), "unpickling the crafted checkpoint ran its code"
    assert isinstance(err.value, ClipforgeError) and "holds Python objects" in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "foreign"])
def test_an_unreadable_last_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    full, _ = _fit(tmp_path / "a", 6)
    _fit(tmp_path / "b", 6, stop_after=4)
    last = tmp_path / "b" / "last.pt"
    data = last.read_bytes()
    last.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x80not a checkpoint" * 50, "empty": b"",
                      "foreign": b""}[damage])
    if damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, last)
    capsys.readouterr()
    resumed, trainer = _fit(tmp_path / "b", 6, resume=True)
    err = capsys.readouterr().err
    assert "prev.pt" in err and "resumed from" in err and "epoch 3 of 6" in err, err
    assert trainer.state.epoch == 6 and len(trainer.state.history) == 6
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)                       # bit-identical to the run that was never interrupted
    assert torch.load(tmp_path / "b" / "prev.pt", weights_only=True)["state"]["epoch"] == 5   # the good one moved on


def test_an_unreadable_checkpoint_without_a_previous_one_is_one_clear_error(tmp_path):
    _fit(tmp_path, 2, stop_after=1)
    assert not (tmp_path / "prev.pt").exists()
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:100])
    with pytest.raises(ClipforgeError, match=r"last\.pt' cannot be read .*no earlier checkpoint") as err:
        _fit(tmp_path, 2, resume=True)
    assert "\n" not in str(err.value)


def test_resume_says_what_it_resumed(tmp_path, capsys):
    _fit(tmp_path, 5, stop_after=3)
    capsys.readouterr()
    _fit(tmp_path, 5, resume=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "resumed" in ln]
    assert len(lines) == 1 and str(tmp_path / "last.pt") in lines[0] and "epoch 3 of 5" in lines[0] \
        and "step 6" in lines[0], lines


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    _fit(tmp_path, 2, stop_after=1)
    model = torch.nn.Linear(3, 3)
    t = Trainer(model, [ParamGroup("m", model, 0.1)], 2, 1, tmp_path, progress=False, tensorboard=False)
    with pytest.raises(ClipforgeError, match="does not match the model"):
        t.resume()


def test_a_non_finite_loss_stops_training_and_saves_nothing(tmp_path):
    model = torch.nn.Linear(4, 2)
    t = Trainer(model, [ParamGroup("m", model, 0.1)], 3, 1, tmp_path, progress=False, tensorboard=False)
    with pytest.raises(ClipforgeError, match=r"training diverged: the loss is nan .*train\.lr"):
        t.fit(lambda e: [None], lambda b: model(torch.ones(1, 4)).sum() * math.nan)
    assert not list(tmp_path.glob("*.pt"))


def test_weights_that_turn_nan_are_never_saved(tmp_path):
    with pytest.raises(ClipforgeError, match="weights .* are not finite"):
        _fit(tmp_path, 4, poison_at=4)                 # the last step of epoch 2: epoch 1's checkpoint stays
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["state"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
