"""The distillation objective (AltCLIP stage 1): a student's projection of base-tower features pulled onto the
teacher's text features of the parallel English sentence, MSE or cosine (``functional.distill_loss``).

No image and no negatives: the target space is fixed by the teacher, so each pair is its own regression.
"""
from __future__ import annotations

import torch

from clipforge.losses.functional import distill_loss
from clipforge.losses.objective import Objective


class DistillObjective(Objective):
    """``x``: the student's base-tower features of the source sentences; ``y``: the teacher's features of their
    English side. ``model`` is the student tower (its ``project`` trains)."""
    drop_last = True

    def __init__(self, student, x: torch.Tensor, y: torch.Tensor, kind: str = "mse", batch_size: int = 256,
                 seed: int = 0):
        super().__init__(student, len(x), batch_size, seed)
        self.x, self.y, self.kind = x, y, kind

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return distill_loss(self.model.project(self.x[idx]), self.y[idx], self.kind)
