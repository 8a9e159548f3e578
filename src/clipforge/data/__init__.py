"""Data: where images and texts come from, decoded robustly, with class descriptions and splits."""
from .dataset import ClassDataset, SkipReport
from .descriptions import ClassDescriptions, DEFAULT_TEMPLATES, load_descriptions
from .splits import protocol_unseen, seen_unseen

__all__ = ["ClassDataset", "SkipReport", "ClassDescriptions", "DEFAULT_TEMPLATES", "load_descriptions",
           "protocol_unseen", "seen_unseen"]
