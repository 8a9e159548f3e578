"""A small DualEncoder over feature "towers", shared by the objective tests and the torchrun worker."""
import numpy as np
import torch

from clipforge.config import HeadConfig
from clipforge.losses.contrastive import CaptionBatch
from clipforge.model.dual_encoder import DualEncoder
from clipforge.towers.base import Tower


class FeatTower(Tower):
    """A stand-in tower for tests whose inputs are already features."""
    def __init__(self, dim, modality):
        super().__init__()
        self.dim, self.modality, self.tower_id = dim, modality, f"test:{modality}"
        self.lin = torch.nn.Linear(dim, dim)

    def prepare(self, items):
        return torch.as_tensor(np.asarray(items, dtype=np.float32))

    def forward(self, x):
        return self.lin(x)


def _model(dropout=0.0, ensemble=2):
    torch.manual_seed(0)
    cfg = HeadConfig(kind="mlp", hidden=16, dropout=dropout, embed_dim=6, text_head=True, init_temperature=0.07, init_bias=None)
    return DualEncoder(FeatTower(10, "image"), FeatTower(6, "text"), cfg, ensemble=ensemble)


def _batch(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return CaptionBatch(torch.randn(n, 10, generator=g), torch.randn(n, 6, generator=g), torch.arange(n) // 2)


