"""Search an image collection: embeddings in FAISS, metadata in SQLite (see core.py for the on-disk layout)."""
from .ann import AnnSpec, choose
from .core import BuildReport, Hit, ImageIndex, as_image, model_fingerprint
from .live import LiveIndex
from .sources import SourceItem, list_source
from .store import Record

__all__ = ["ImageIndex", "LiveIndex", "Hit", "BuildReport", "Record", "AnnSpec", "choose", "list_source", "SourceItem",
           "as_image", "model_fingerprint"]
