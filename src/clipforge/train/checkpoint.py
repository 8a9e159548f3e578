"""Training checkpoints that hold no code: tensors and plain values only, read back with ``weights_only=True``.

Why: ``--resume`` loads whatever ``last.pt`` is in the run folder, and a pickle can run code when it is read. So a
checkpoint holds only what the safe unpickler accepts (tensors, dicts, lists, numbers, strings); the RNG states,
which numpy and ``random`` give as tuples with an array inside, are stored as dicts of tensors and ints.

A checkpoint that cannot be read (truncated, not a torch file, not a clipforge checkpoint) is a clear error, not a
traceback, and the previous good checkpoint is kept next to it (``last.pt`` -> ``prev.pt``, swapped atomically)
so a damaged ``last.pt`` costs one checkpoint interval, not the run. A file that holds Python objects other than
those is refused outright: it was not written by clipforge, and falling back past it would hide that.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from clipforge.errors import CheckpointError

KEYS = ("model", "opt", "sched", "state", "rng")


class UnsafeCheckpoint(CheckpointError):
    """The file holds pickled Python objects (possibly code), not just tensors and plain values."""


def previous_of(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``last.pt`` -> ``prev.pt``, ``x.pt`` -> ``x.prev.pt``."""
    return path.with_name("prev.pt" if path.name == "last.pt" else f"{path.stem}.prev{path.suffix}")


def rng_state() -> dict:
    """torch, numpy and python RNG states as tensors and plain values (what ``weights_only=True`` reads)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": int(version), "internal": [int(x) for x in internal], "gauss": gauss}}


def set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def keep_previous(path: Path) -> None:
    """Make the current ``path`` the previous checkpoint, atomically (a hard link renamed into place, so
    ``path`` itself never goes missing; a copy where the filesystem has no hard links)."""
    if not path.is_file():
        return
    prev = previous_of(path)
    tmp = prev.with_name(f".{prev.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, prev)


def read_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``, read with the safe unpickler; CheckpointError (one line) when it cannot be."""
    try:
        ck = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError... for bad files
        text = " ".join(str(e).split())
        if "Weights only load failed" in text and "Unsupported global" in text:  # an object to build: refuse
            raise UnsafeCheckpoint(f"checkpoint '{path}' holds Python objects other than tensors and plain values "
                                   "(it may run code when loaded) and was not loaded; clipforge never writes such "
                                   "a file: delete it, or train without --resume") from None
        raise CheckpointError(f"checkpoint '{path}' cannot be read (truncated, or not a torch file: "
                              f"{type(e).__name__}: {text[:160]})") from None
    if not isinstance(ck, dict) or any(k not in ck for k in KEYS):
        found = sorted(ck) if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(f"checkpoint '{path}' is not a clipforge training checkpoint (it has {found}, "
                              f"not {list(KEYS)})")
    return ck
