"""The web service and its page. ``create_app`` for tests and embedding; ``run`` for ``clipforge serve``."""
from __future__ import annotations

from ..extras import require

require("fastapi", "serve", "the web service")  # before .app imports it: one line naming the extra, not a traceback
require("multipart", "serve", "the web service's uploads")

from .app import ServeSettings, create_app  # noqa: E402


def run(index, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None, model=None,
        torch_threads: int = 1, access_log: bool = False, log_level: str = "info") -> None:
    """Serve ``index`` with uvicorn. One torch (and FAISS) thread by default: the event loop needs the other core,
    and concurrent text queries are batched into one forward pass instead (see batcher.py)."""
    import torch
    uvicorn = require("uvicorn", "serve", "clipforge serve")
    torch.set_num_threads(max(1, int(torch_threads)))
    try:  # FAISS's OpenMP threads would spin against the event loop for searches of a few queries
        import faiss
        faiss.omp_set_num_threads(max(1, int(torch_threads)))
    except ImportError:  # pragma: no cover
        pass
    app = create_app(index, settings, model)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)


__all__ = ["ServeSettings", "create_app", "run"]
