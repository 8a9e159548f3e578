"""The web service and its page. ``create_app`` for tests and embedding; ``run`` for ``clipforge serve``."""
from __future__ import annotations

import ipaddress

from clipforge.util.extras import require

require("fastapi", "serve", "the web service")  # before .app imports it: one line naming the extra, not a traceback
require("python_multipart", "serve", "the web service's uploads")

from clipforge.serve.app import LOCAL_HOSTS, ServeSettings, create_app  # noqa: E402


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(host: str) -> tuple:
    """The Host names served when none are given: the loopback names when bound to loopback (a page on another
    origin cannot reach the server by DNS rebinding), any otherwise (name them with --allowed-hosts)."""
    return LOCAL_HOSTS if is_loopback(host) else ("*",)


def server_config(app, host: str = "127.0.0.1", port: int = 8000, header_timeout: float = 5,
                  access_log: bool = False, log_level: str = "info"):
    """uvicorn's Config for ``app`` with the header deadline of protocol.py (``header_timeout`` seconds, which is
    also uvicorn's keep-alive timeout)."""
    uvicorn = require("uvicorn", "serve", "clipforge serve")
    from clipforge.serve.protocol import HeaderTimeoutProtocol
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                          http=HeaderTimeoutProtocol, timeout_keep_alive=header_timeout)


def run(index, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None, model=None,
        torch_threads: int = 1, access_log: bool = False, log_level: str = "info", header_timeout: float = 5,
        announce=None) -> None:
    """Serve ``index`` with uvicorn. One torch (and FAISS) thread by default: the event loop needs the other core,
    and concurrent text queries are batched into one forward pass instead (see batcher.py). ``announce(url)`` is
    called once the index is open and the app is built, so a bad index is reported before any 'serving' line."""
    import torch
    uvicorn = require("uvicorn", "serve", "clipforge serve")
    torch.set_num_threads(max(1, int(torch_threads)))
    try:  # FAISS's OpenMP threads would spin against the event loop for searches of a few queries
        import faiss
        faiss.omp_set_num_threads(max(1, int(torch_threads)))
    except ImportError:  # pragma: no cover
        pass
    app = create_app(index, settings, model)
    if announce is not None:
        announce(f"http://{'[' + host + ']' if ':' in host else host}:{port}/")
    uvicorn.Server(server_config(app, host, port, header_timeout, access_log, log_level)).run()


__all__ = ["ServeSettings", "create_app", "run", "server_config", "default_allowed_hosts", "is_loopback"]
