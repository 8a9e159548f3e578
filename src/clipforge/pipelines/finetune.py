"""Fine-tune the image tower's last blocks on a class dataset (the seed method's recipe): the heads, the
similarity and the tower's last ``towers.unlock_image_last_n`` blocks train together, each with its own learning
rate (``train.lr``, ``train.lr_similarity``, ``train.lr_image_tower``).

Nothing before those blocks trains, so the frozen trunk runs ONCE per image (``trunk_inputs``, kept in memory as
float16) and every step runs only the last blocks: the same arithmetic as re-encoding every step, a fraction of
the time. The fine-tuned tower is a copy, so a benchmark that trains other methods on the same ``Prepared``
keeps the pretrained one.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from clipforge.data.images import load_image
from clipforge.errors import ClipforgeError

_TRUNKS: dict[tuple, torch.Tensor] = {}   # (tower, data, blocks) -> activations: prepared once per process


def _decoded(ds) -> list:
    """The items of ``ds`` that decode, as the embedding stage keeps them (arrays always decode)."""
    if isinstance(ds.images, np.ndarray):
        return list(ds.images)
    out = []
    for item in ds.images:
        img, _ = load_image(item)
        if img is not None:
            out.append(img)
    return out


@torch.inference_mode()
def trunk_inputs(tower, ds, last_n: int, n_expected: int, batch_size: int = 64) -> torch.Tensor:
    """Activations of the frozen trunk (everything before the last ``last_n`` blocks) for every kept image."""
    key = (tower.fingerprint(), ds.fingerprint(), last_n)
    if key not in _TRUNKS:
        was = tower.training
        tower.eval()
        items = _decoded(ds)
        if len(items) != n_expected:
            raise ClipforgeError(f"{len(items)} images decode but {n_expected} have features; clear the cache")
        parts = []
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            x = tower.prepare(np.stack(chunk) if isinstance(ds.images, np.ndarray) else chunk)
            parts.append(tower.trunk(x, last_n).half())
        tower.train(was)
        _TRUNKS[key] = torch.cat(parts) if parts else torch.zeros(0)
    return _TRUNKS[key]


def tunable_tower(tower, last_n: int):
    """A copy of ``tower`` whose last ``last_n`` blocks train (the original stays locked and unchanged)."""
    if last_n > len(tower.blocks()):
        raise ClipforgeError(f"config field 'towers.unlock_image_last_n' is {last_n} but {tower.tower_id} has "
                             f"{len(tower.blocks())} blocks")
    return copy.deepcopy(tower).unlock(last_n)


@torch.inference_mode()
def tuned_features(model, p, last_n: int, batch_size: int = 256):
    """``p`` with train and test features re-computed by the fine-tuned tower (for scoring and calibration)."""
    model.eval()
    tower = model.image_tower

    def feats(ds, n):
        h = trunk_inputs(p.image_tower, ds, last_n, n)
        return torch.cat([tower.from_trunk(h[i:i + batch_size].float(), last_n)
                          for i in range(0, len(h), batch_size)]).numpy() if len(h) else np.zeros((0, tower.dim), np.float32)
    return dataclasses.replace(p, train_x=feats(p.train_ds, len(p.train_x)), test_x=feats(p.test_ds, len(p.test_x)))
