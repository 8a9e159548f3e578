"""What a benchmark JSON records about where it ran, so numbers can be compared across machines."""
from __future__ import annotations

import os
import platform
from importlib import metadata


def environment() -> dict:
    import torch
    versions = {}
    for pkg in ("clipforge", "torch", "transformers", "sentence-transformers", "numpy", "scikit-learn", "faiss-cpu"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "versions": versions}
