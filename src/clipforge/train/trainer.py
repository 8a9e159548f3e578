"""The training loop, readable top to bottom (after nanoGPT's train.py).

What it owns: AdamW with one parameter group per module (optionally with an AMP gradient scaler) (each its own learning rate: the seed advised
a lower rate for the similarity net than for the heads), linear warmup then cosine decay, gradient
clipping, seeding, a progress bar, TensorBoard scalars, and checkpoints written atomically (``last.pt``
every epoch with ``prev.pt`` the one before it, ``best.pt`` when the validation metric improves) that
``resume=True`` continues from; they hold tensors and plain values only (checkpoint.py: nothing in them runs).
A non-finite loss or weight stops training with an error before anything more is saved.
What it does not own: the objective. ``step_fn(batch) -> loss`` comes from objectives.py.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from clipforge.util.extras import MissingExtra, available
from clipforge.train.checkpoint import UnsafeCheckpoint, keep_previous, previous_of, read_checkpoint, rng_state, set_rng_state
from clipforge.errors import CheckpointError, ClipforgeError
from clipforge.util.testhooks import mid_write, pause_point


# Test hook: seconds to sleep after every step, so a crash test can kill -9 a run reliably mid-epoch.
STEP_DELAY = float(os.environ.get("CLIPFORGE_TEST_STEP_DELAY", "0") or 0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class ParamGroup:
    name: str
    module: nn.Module
    lr: float
    weight_decay: float = 0.0


@dataclass
class TrainState:
    epoch: int = 0
    step: int = 0
    best: float = -math.inf
    history: list[dict] = field(default_factory=list)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


_NOTED: list = []


def tensorboard_writer(directory: Path):
    """A SummaryWriter, or None with one note naming the extra when TensorBoard is not installed: curves are a
    by-product of training, so their absence must not stop a run of the light core."""
    if not available("tensorboard"):
        if not _NOTED:  # once per process: an ensemble trains many heads
            _NOTED.append(True)
            print(f"note: {MissingExtra('training curves', 'tensorboard', 'tensorboard')}", file=sys.stderr)
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(directory))


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, mid_write(f, "checkpoint-write"))  # test hook: may pause part-way (tests/test_crash.py)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def adamw(params: list[dict]) -> torch.optim.AdamW:
    """AdamW with its fused kernel where PyTorch has one (CPU and CUDA): one pass per tensor instead of about ten
    (the loop implementation PyTorch picks on the CPU by default), the same update up to float rounding. The loop
    is kept for other devices and dtypes."""
    tensors = [p for g in params for p in g["params"]]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in tensors)
    return torch.optim.AdamW(params, fused=True) if fused else torch.optim.AdamW(params)


def _finite(p: torch.Tensor) -> bool:
    """All entries finite, in one reduction (min and max are NaN when any entry is, +-inf when one is) instead of
    isfinite's full boolean copy of every weight at every epoch."""
    if p.numel() == 0:
        return True
    lo, hi = torch.aminmax(p.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _say(message: str) -> None:
    """One line on stderr from rank 0 (under torchrun every rank resumes; one report is enough)."""
    if int(os.environ.get("RANK", "0")) == 0:
        tqdm.write(message, file=sys.stderr)


class Trainer:
    def __init__(self, model: nn.Module, groups: list[ParamGroup], epochs: int, steps_per_epoch: int,
                 out_dir: str | Path | None = None, warmup_steps: int = 10, grad_clip: float = 1.0,
                 log_every: int = 10, progress: bool = True, tensorboard: bool = True,
                 checkpoint_every: int = 1, scaler: "torch.amp.GradScaler | None" = None):
        self.model, self.epochs, self.steps_per_epoch = model, epochs, steps_per_epoch
        self.out = Path(out_dir) if out_dir else None
        params = []
        for g in groups:
            ps = [p for p in g.module.parameters() if p.requires_grad]
            if ps:
                params.append({"params": ps, "lr": g.lr, "weight_decay": g.weight_decay, "name": g.name})
        if not params:
            raise ValueError("nothing to train: every parameter is locked")
        self.opt = adamw(params)
        # named once: walking a text tower's hundreds of frozen parameters every epoch cost more than a 1-head step
        self._trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        total = epochs * steps_per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: warmup_cosine(s, total, warmup_steps))
        self.grad_clip, self.log_every, self.progress = grad_clip, log_every, progress
        self.checkpoint_every = max(1, checkpoint_every)
        self.scaler = scaler  # fp16 AMP on CUDA; bf16 autocast needs none
        self.state = TrainState()
        self._best_pending = False
        self._keep_previous = True  # off until the next save after resuming past an unreadable last.pt
        self.resumed_from: Path | None = None
        self.writer = None
        if self.out and tensorboard:
            self.writer = tensorboard_writer(self.out / "tb")

    # -- checkpoints ------------------------------------------------------------------------------
    def _checkpoint(self) -> dict:
        # Frozen parameters (locked towers: often 100x the heads) are rebuilt from their ids, not checkpointed.
        frozen = {n for n, p in self.model.named_parameters() if not p.requires_grad}
        state = {k: v for k, v in self.model.state_dict().items() if k not in frozen}
        return {"model": state, "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "state": dict(self.state.__dict__), "rng": rng_state()}

    def save(self, name: str) -> None:
        """Write ``name`` atomically; ``last.pt`` keeps its predecessor as ``prev.pt`` (the fallback of resume)."""
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            self._check_finite()
            if name == "last.pt":
                if self._keep_previous:
                    keep_previous(self.out / name)
                self._keep_previous = True
            atomic_torch_save(self._checkpoint(), self.out / name)

    def resume(self, name: str = "last.pt") -> bool:
        """Continue from ``name`` (or, when it cannot be read, from the checkpoint before it); False if none.

        A checkpoint holding Python objects is refused, never skipped: see checkpoint.py.
        """
        if not self.out:
            return False
        problems = []
        for path in (self.out / name, previous_of(self.out / name)):
            if not path.is_file():
                continue
            try:
                ck = read_checkpoint(path)
            except UnsafeCheckpoint:
                raise
            except CheckpointError as e:
                problems.append(str(e))
                continue
            self._restore(ck, path)
            self.resumed_from = path
            if problems:
                _say(f"warning: {problems[0]}; resuming from the previous checkpoint {path.name} instead")
                self._keep_previous = False  # the next last.pt must not push the good prev.pt out
            return True
        if problems:
            raise CheckpointError(f"{problems[0]}; there is no earlier checkpoint to fall back on: delete it to "
                                  "start again, or run without --resume")
        return False

    def _restore(self, ck: dict, path: Path) -> None:
        try:
            missing, unexpected = self.model.load_state_dict(ck["model"], strict=False)
            trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
            if unexpected or trainable & set(missing):
                raise CheckpointError(f"checkpoint '{path}' does not match the model: missing "
                                      f"{sorted(trainable & set(missing))[:5]}, unexpected {unexpected[:5]}")
            self.opt.load_state_dict(ck["opt"])
            self.sched.load_state_dict(ck["sched"])
            self.state = TrainState(**ck["state"])
            set_rng_state(ck["rng"])
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint '{path}' does not fit this run (was the config changed since it was "
                                  f"written?): {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None

    def _check_finite(self, loss: float | None = None) -> None:
        """Stop before a diverged model is saved: a NaN model gives chance accuracy and looks like a result."""
        where = f"epoch {self.state.epoch + 1}, step {self.state.step}"
        if loss is not None and not math.isfinite(loss):
            raise ClipforgeError(f"training diverged: the loss is {loss} at {where}; nothing more was saved. "
                                 "Lower the learning rate (train.lr) or raise train.warmup_steps")
        bad = [n for n, p in self._trainable if not _finite(p)]
        if bad:
            raise ClipforgeError(f"training diverged: weights {bad[:3]} are not finite at {where}; nothing more was "
                                 "saved. Lower the learning rate (train.lr) or raise train.warmup_steps")

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, batches: Callable[[int], Iterable], step_fn: Callable[[object], torch.Tensor],
            eval_fn: Callable[[], float] | None = None, resume: bool = False,
            on_epoch_end: Callable[[int], None] | None = None,
            on_step: Callable[[int], None] | None = None) -> TrainState:
        """``batches(epoch)`` yields the epoch's batches; ``step_fn`` returns the loss of one batch.

        ``on_step(step)`` runs after every optimizer step (e.g. to log a similarity heatmap to ``self.writer``).
        """
        if resume:
            if self.resume():
                _say(f"resumed from {self.resumed_from}: epoch {self.state.epoch} of {self.epochs} done, "
                     f"step {self.state.step}")
            elif self.out:
                _say(f"no checkpoint in {self.out}: starting from the beginning")
        bar = tqdm(total=self.epochs, initial=self.state.epoch, desc="train", unit="epoch", disable=not self.progress,
                   leave=False)
        # train mode is set before the loop and again after an evaluation, not every epoch: model.train() walks
        # every module of both towers (and a locked tower walks them twice), ~8 ms an epoch for heads that take 30
        self.model.train()
        while self.state.epoch < self.epochs:
            losses = []
            t_epoch = time.perf_counter()
            for batch in batches(self.state.epoch):
                self.opt.zero_grad(set_to_none=True)
                loss = step_fn(batch)
                value = float(loss.detach())
                if not math.isfinite(value):
                    self._check_finite(value)
                if loss.requires_grad:  # a loss without a graph means step_fn did its own backward (gradient caching)
                    (self.scaler.scale(loss) if self.scaler else loss).backward()
                if self.scaler:
                    self.scaler.unscale_(self.opt)
                if self.grad_clip:
                    nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], self.grad_clip)
                if self.scaler:
                    self.scaler.step(self.opt)
                    self.scaler.update()
                else:
                    self.opt.step()
                self.sched.step()
                self.state.step += 1
                if STEP_DELAY:
                    time.sleep(STEP_DELAY)
                pause_point("step")  # test hook (tests/test_crash.py)
                losses.append(value)
                if self.writer and self.state.step % self.log_every == 0:
                    self.writer.add_scalar("train/loss", losses[-1], self.state.step)
                    for g in self.opt.param_groups:
                        self.writer.add_scalar(f"lr/{g['name']}", g["lr"], self.state.step)
                if on_step:
                    on_step(self.state.step)
            record = {"epoch": self.state.epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                      "seconds": time.perf_counter() - t_epoch}  # the epoch's steps (data, forward, backward, update)
            self.state.epoch += 1
            self._check_finite()
            if eval_fn is not None:
                self.model.eval()
                record["val"] = float(eval_fn())
                self.model.train()
                if self.writer:
                    self.writer.add_scalar("val/metric", record["val"], self.state.step)
            self.state.history.append(record)
            # "best" is the validation metric when there is one, else the lowest training loss.
            score = record.get("val", -record["loss"])
            if score > self.state.best:
                self.state.best = score
                self._best_pending = True
            if self.state.epoch % self.checkpoint_every == 0 or self.state.epoch == self.epochs:
                self.save("last.pt")
                if self._best_pending:
                    self.save("best.pt")
                    self._best_pending = False
            if on_epoch_end:
                on_epoch_end(self.state.epoch)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
        bar.close()
        if self.writer:
            self.writer.flush()
        return self.state
