"""The training loop, readable top to bottom (after nanoGPT's train.py).

What it owns: AdamW with one parameter group per module (optionally with an AMP gradient scaler) (each its own learning rate: the seed advised
a lower rate for the similarity net than for the heads), linear warmup then cosine decay, gradient
clipping, seeding, a progress bar, TensorBoard scalars, and checkpoints written atomically (``last.pt``
every epoch, ``best.pt`` when the validation metric improves) that ``resume=True`` continues from.
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

from .extras import MissingExtra, available
from .testhooks import mid_write, pause_point


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


def tensorboard_writer(directory: Path):
    """A SummaryWriter, or None with one note naming the extra when TensorBoard is not installed: curves are a
    by-product of training, so their absence must not stop a run of the light core."""
    if not available("tensorboard"):
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
        self.opt = torch.optim.AdamW(params)
        total = epochs * steps_per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: warmup_cosine(s, total, warmup_steps))
        self.grad_clip, self.log_every, self.progress = grad_clip, log_every, progress
        self.checkpoint_every = max(1, checkpoint_every)
        self.scaler = scaler  # fp16 AMP on CUDA; bf16 autocast needs none
        self.state = TrainState()
        self._best_pending = False
        self.writer = None
        if self.out and tensorboard:
            self.writer = tensorboard_writer(self.out / "tb")

    # -- checkpoints ------------------------------------------------------------------------------
    def _checkpoint(self) -> dict:
        # Frozen parameters (locked towers: often 100x the heads) are rebuilt from their ids, not checkpointed.
        frozen = {n for n, p in self.model.named_parameters() if not p.requires_grad}
        state = {k: v for k, v in self.model.state_dict().items() if k not in frozen}
        return {"model": state, "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "state": self.state.__dict__, "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                                       "python": random.getstate()}}

    def save(self, name: str) -> None:
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(self._checkpoint(), self.out / name)

    def resume(self, name: str = "last.pt") -> bool:
        path = self.out / name if self.out else None
        if not path or not path.is_file():
            return False
        ck = torch.load(path, weights_only=False)
        missing, unexpected = self.model.load_state_dict(ck["model"], strict=False)
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        if unexpected or trainable & set(missing):
            raise RuntimeError(f"checkpoint {path} does not match the model: missing {sorted(trainable & set(missing))[:5]}, "
                               f"unexpected {unexpected[:5]}")
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        self.state = TrainState(**ck["state"])
        torch.set_rng_state(ck["rng"]["torch"])
        np.random.set_state(ck["rng"]["numpy"])
        random.setstate(ck["rng"]["python"])
        return True

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, batches: Callable[[int], Iterable], step_fn: Callable[[object], torch.Tensor],
            eval_fn: Callable[[], float] | None = None, resume: bool = False,
            on_epoch_end: Callable[[int], None] | None = None,
            on_step: Callable[[int], None] | None = None) -> TrainState:
        """``batches(epoch)`` yields the epoch's batches; ``step_fn`` returns the loss of one batch.

        ``on_step(step)`` runs after every optimizer step (e.g. to log a similarity heatmap to ``self.writer``).
        """
        if resume:
            self.resume()
        bar = tqdm(total=self.epochs, initial=self.state.epoch, desc="train", unit="epoch", disable=not self.progress,
                   leave=False)
        while self.state.epoch < self.epochs:
            self.model.train()
            losses = []
            t_epoch = time.perf_counter()
            for batch in batches(self.state.epoch):
                self.opt.zero_grad(set_to_none=True)
                loss = step_fn(batch)
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
                losses.append(float(loss.detach()))
                if self.writer and self.state.step % self.log_every == 0:
                    self.writer.add_scalar("train/loss", losses[-1], self.state.step)
                    for g in self.opt.param_groups:
                        self.writer.add_scalar(f"lr/{g['name']}", g["lr"], self.state.step)
                if on_step:
                    on_step(self.state.step)
            record = {"epoch": self.state.epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                      "seconds": time.perf_counter() - t_epoch}  # the epoch's steps (data, forward, backward, update)
            self.state.epoch += 1
            if eval_fn is not None:
                self.model.eval()
                record["val"] = float(eval_fn())
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
