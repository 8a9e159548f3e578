"""How towers load weights without noise: a local model loads in well under a second, so transformers' per-tensor
"Loading weights" bar only clutters every command's output. Bars stay on for hub downloads (slow, worth
watching) and whenever ``CLIPFORGE_VERBOSE=1``."""
from __future__ import annotations

import os


def verbose() -> bool:
    return os.environ.get("CLIPFORGE_VERBOSE", "").strip().lower() in ("1", "true", "yes")


def local_load(name_or_path: str) -> None:
    """Before ``from_pretrained(name_or_path)``: a local folder loads offline and, unless verbose, without bars."""
    if not os.path.isdir(name_or_path):
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not verbose():
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()


__all__ = ["local_load", "verbose"]
