"""Evaluation: zero-shot (+GZSL), linear probe, and results files."""
from .zeroshot import ZeroShotClassifier, gzsl_metrics, topk_metrics

__all__ = ["ZeroShotClassifier", "topk_metrics", "gzsl_metrics"]
