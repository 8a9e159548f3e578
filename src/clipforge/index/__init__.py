"""Search an image collection: embeddings in FAISS, metadata in SQLite (see core.py for the on-disk layout)."""
from clipforge.index.ann import AnnSpec, choose
from clipforge.index.core import BuildReport, Hit, ImageIndex, as_image, model_fingerprint
from clipforge.index.live import LiveIndex
from clipforge.index.sources import SourceItem, list_source
from clipforge.index.store import Record

__all__ = ["ImageIndex", "LiveIndex", "Hit", "BuildReport", "Record", "AnnSpec", "choose", "list_source", "SourceItem",
           "as_image", "model_fingerprint"]
