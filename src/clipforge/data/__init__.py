"""Data: where images and texts come from, decoded robustly, with class descriptions and splits."""
from clipforge.data.dataset import ClassDataset, SkipReport
from clipforge.data.descriptions import ClassDescriptions, DEFAULT_TEMPLATES, load_descriptions
from clipforge.data.splits import protocol_unseen, seen_unseen

__all__ = ["ClassDataset", "SkipReport", "ClassDescriptions", "DEFAULT_TEMPLATES", "load_descriptions",
           "protocol_unseen", "seen_unseen"]
