"""Evaluation: zero-shot (+GZSL), linear probe, and results files."""
from clipforge.evaluate.zeroshot import ZeroShotClassifier, gzsl_metrics, topk_metrics, zero_shot_classifier

__all__ = ["ZeroShotClassifier", "zero_shot_classifier", "topk_metrics", "gzsl_metrics"]
