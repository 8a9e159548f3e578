"""Fast inference of a frozen image tower: the fastest of a few backends, chosen once per machine by timing.

The embedding cache (cache.embed_images) sends every batch of prepared images through ``fast_encoder(tower)``.
What makes it fast, in the order it matters on a small CPU:

* ONNX Runtime (``onnx``): the tower exported once (``torch.onnx.export``, cached on disk by weights hash) and
  run in C++ with its graph optimisations (BatchNorm folded, depthwise kernels, NCHWc layouts). On the 2-core
  machine this is ~4-8x eager PyTorch for EfficientNet-Lite0. Its threads do not spin, so decoding threads get
  the cores while a batch waits. ``onnx-parallel`` runs a one-thread session on several micro-batches at once
  instead of one run on several threads (no per-operator synchronisation).
* ``fused``: the tower traced with torch.fx, every eval-mode BatchNorm that follows a convolution folded into
  the convolution's weights, channels_last, run under ``torch.inference_mode``.
* ``eager``: the tower's own forward, channels_last, ``inference_mode`` (the fallback that always works).

``auto`` builds each candidate that works for this tower, checks it against the eager output, times a few
batches at the tower's input size and keeps the fastest; the choice is saved (per machine, library versions,
tower architecture and input size) in ``$CLIPFORGE_FAST_CACHE/choices.json`` so later runs skip the timing.
``CLIPFORGE_EMBED_BACKEND`` (``auto``, ``onnx-parallel``, ``onnx``, ``fused``, ``eager``, ``off``) overrides it; ``off`` gives the
plain ``Tower.encode`` path.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import platform
import time
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from clipforge.util import paths as paths
from clipforge.util.extras import require
from clipforge.util.files import atomic_write

log = logging.getLogger("clipforge.embed.fast")

BACKENDS = ("onnx-parallel", "onnx", "fused", "eager")
MIN_ITEMS = 64          # fewer images than this: the plain path (setting up a backend costs more than it saves)
TUNE_ITEMS = 32         # images per timed run when choosing a backend
CHOICE_VERSION = 2     # bump when the candidates change, so saved choices are timed again
TOLERANCE = 1e-3        # a backend must match eager to this (relative to the largest feature) to be used


# -- where things are kept -------------------------------------------------------------------------------------

def cache_dir() -> Path:
    return paths.cache_dir("fast-embed")


def machine_key() -> str:
    """What a timing depends on besides the model: CPU, core and thread counts, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return json.dumps([cpu, os.cpu_count(), torch.get_num_threads(), torch.__version__, ort_version])


def weights_digest(module: nn.Module) -> str:
    """Architecture + every parameter and buffer: an exported graph is reused only for the very same weights."""
    h = hashlib.sha256(repr(module).encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


# -- BatchNorm folding -----------------------------------------------------------------------------------------

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _LeafTracer(torch.fx.Tracer):
    """Keeps every convolution (including subclasses such as TF-style 'same'-padding convs) and norm as one node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*_CONVS, nn.modules.batchnorm._BatchNorm)) or super().is_leaf_module(m, qualname)


def _set_submodule(root: nn.Module, target: str, new: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def fold_batchnorm(module: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``module`` (eval mode) with each BatchNorm that directly follows a convolution folded into it.

    Returns (graph module, number of BatchNorms folded). Raises if the module cannot be traced by torch.fx.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    module = copy.deepcopy(module).eval()
    graph = _LeafTracer().trace(module)
    gm = torch.fx.GraphModule(module, graph)
    modules = dict(gm.named_modules())
    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0] if node.args else None
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), _CONVS)):
            continue
        bn, conv = modules[node.target], modules[src.target]
        if len(src.users) != 1 or uses[src.target] != 1 or uses[node.target] != 1 or bn.running_mean is None:
            continue  # the conv output is used elsewhere, or a module is called twice: folding would change them
        _set_submodule(gm, src.target, fuse_conv_bn_eval(conv, bn))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm, folded


# -- backends ----------------------------------------------------------------------------------------------------

class _Torch:
    def __init__(self, module: nn.Module, micro_batch: int):
        self.module, self.micro_batch = module, micro_batch

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        out = []
        was_training = self.module.training
        self.module.eval()  # the eager backend is the tower itself, which may be put back in training mode meanwhile
        try:
            with torch.inference_mode():
                for s in range(0, len(x), self.micro_batch):
                    xb = x[s:s + self.micro_batch].contiguous(memory_format=torch.channels_last)
                    out.append(self.module(xb).float().numpy())
        finally:
            self.module.train(was_training)
        return np.concatenate(out)


class _Onnx:
    """An ONNX Runtime session. ``parallel=False``: one run at a time on ``threads`` intra-op threads.
    ``parallel=True``: a one-thread session run on ``threads`` micro-batches at once (ORT sessions are thread-safe):
    no intra-op synchronisation per operator, which on a few cores is faster than one multi-threaded run."""

    def __init__(self, path: Path, micro_batch: int, threads: int, parallel: bool = False):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1 if parallel else max(1, threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads would burn the cores that the decoding threads need between batches.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.micro_batch = micro_batch
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clipforge-ort") \
            if parallel and threads > 1 else None

    def _run(self, a: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: a})[0]

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        a = x.contiguous().numpy().astype(np.float32, copy=False)
        chunks = [a[s:s + self.micro_batch] for s in range(0, len(a), self.micro_batch)]
        out = list(self.pool.map(self._run, chunks)) if self.pool and len(chunks) > 1 else [self._run(c) for c in chunks]
        return np.concatenate(out).astype(np.float32, copy=False)


class _Forward(nn.Module):
    """The tower's forward alone (a Tower is an nn.Module with extra methods the exporter must not see)."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, x):
        return self.tower(x)


def export_onnx(tower: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Export the tower's forward (batch axis dynamic) to ``path``, atomically."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Forward(copy.deepcopy(tower).eval()), (example,), buf, dynamo=False, opset_version=17,
                          input_names=["pixels"], output_names=["features"],
                          dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})
    _atomic_write(path, buf.getvalue())
    return path


def example_input(tower, n: int = 2) -> torch.Tensor | None:
    """A batch shaped like the tower's prepared input (None when ``prepare`` does not give one tensor)."""
    size = tower.input_size or 224
    try:
        x = tower.prepare([Image.new("RGB", (size, size), (128, 128, 128))] * n)
    except Exception:  # noqa: BLE001 - a tower that cannot prepare a grey image has no fast path
        return None
    return x if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else None


@dataclass
class FastImageEncoder:
    """``encoder(prepared_batch) -> float32 features``: the chosen backend for one tower on this machine."""
    backend: str
    micro_batch: int
    threads: int
    run: object = field(repr=False)
    timings: dict = field(default_factory=dict)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.run(x)


def _build(tower, name: str, micro_batch: int, example: torch.Tensor, digest: str, threads: int):
    if name == "eager":
        return _Torch(tower, micro_batch)
    if name == "fused":
        gm, n = fold_batchnorm(tower)
        log.debug("folded %d BatchNorms of %s", n, tower.tower_id)
        return _Torch(gm.to(memory_format=torch.channels_last), micro_batch)
    if name in ("onnx", "onnx-parallel"):
        require("onnxruntime", "onnx", f"the {name} embedding backend")  # fail early; auto-tuning skips it
        path = cache_dir() / f"image-{digest}-{tuple(example.shape[1:])}.onnx".replace(" ", "")
        if not path.is_file():
            export_onnx(tower, example[:2], path)
        return _Onnx(path, micro_batch, threads, parallel=name == "onnx-parallel")
    raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")


def _time(run, x: torch.Tensor) -> float:
    """Seconds per image, best of a few runs (the first run of each backend warms it up)."""
    run(x[: max(1, len(x) // 4)])
    best = float("inf")
    t_end = time.perf_counter() + 1.0
    for _ in range(3):
        t0 = time.perf_counter()
        run(x)
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > t_end:
            break
    return best / len(x)


def _load_choices() -> dict:
    try:
        return json.loads((cache_dir() / "choices.json").read_text())
    except (OSError, ValueError):
        return {}


def _save_choice(key: str, choice: dict) -> None:
    choices = _load_choices()
    choices[key] = choice
    try:
        _atomic_write(cache_dir() / "choices.json", json.dumps(choices, indent=1).encode())
    except OSError as e:  # a read-only home: just tune again next time
        log.info("cannot save the backend choice: %s", e)


_MEMO: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def requested_backend(backend: str | None = None) -> str:
    name = (backend or os.environ.get("CLIPFORGE_EMBED_BACKEND") or "auto").strip().lower()
    if name not in ("auto", "off", *BACKENDS):
        from clipforge.errors import ClipforgeError
        raise ClipforgeError(f"embedding backend '{name}' is not one of auto, off, {', '.join(BACKENDS)} "
                             "(CLIPFORGE_EMBED_BACKEND)")
    return name


def fast_encoder(tower, backend: str | None = None, threads: int | None = None) -> FastImageEncoder | None:
    """The fastest working backend for ``tower`` here (``None``: use the plain path). Memoised per tower+weights."""
    name = requested_backend(backend)
    if name == "off" or tower.modality != "image":
        return None
    example = example_input(tower)
    if example is None:
        return None
    threads = threads or torch.get_num_threads()
    digest = weights_digest(tower)
    memo = _MEMO.setdefault(tower, {})
    key = (name, digest, tuple(example.shape[1:]), threads)
    if key not in memo:
        memo.clear()  # older weights of this tower are not coming back
        memo[key] = _choose(tower, name, example, digest, threads)
    return memo[key]


def _choose(tower, name: str, example: torch.Tensor, digest: str, threads: int) -> FastImageEncoder | None:
    was_training = tower.training
    tower.eval()
    try:
        arch = hashlib.sha256(repr(tower).encode()).hexdigest()[:16]
        choice_key = json.dumps([CHOICE_VERSION, machine_key(), tower.tower_id, arch, list(example.shape[1:]), threads])
        if name != "auto":
            run = _build(tower, name, 32, example, digest, threads)
            return FastImageEncoder(name, 32, threads, run)
        saved = _load_choices().get(choice_key)
        if saved:
            try:
                run = _build(tower, saved["backend"], saved["micro_batch"], example, digest, threads)
                return FastImageEncoder(saved["backend"], saved["micro_batch"], threads, run, saved.get("timings", {}))
            except Exception as e:  # noqa: BLE001 - the saved backend broke (e.g. onnxruntime removed): tune again
                log.info("saved backend %s unusable (%s); timing again", saved["backend"], e)
        return _tune(tower, example, digest, threads, choice_key)
    finally:
        tower.train(was_training)


def _tune(tower, example: torch.Tensor, digest: str, threads: int, choice_key: str) -> FastImageEncoder | None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((TUNE_ITEMS, *example.shape[1:]), generator=g).contiguous(memory_format=torch.channels_last)
    eager = _Torch(tower, TUNE_ITEMS)
    ref = eager(x[:4])
    scale = max(1.0, float(np.abs(ref).max()))
    timings, runs = {}, {}
    candidates = [("onnx-parallel", 4), ("onnx-parallel", 16), ("onnx", 8), ("onnx", 32), ("fused", 8), ("eager", 8)]
    for backend, mb in candidates:
        label = f"{backend}/{mb}"
        try:
            run = _build(tower, backend, mb, example, digest, threads)
            err = float(np.abs(run(x[:4]) - ref).max())
            if not err <= TOLERANCE * scale:
                log.info("backend %s differs from eager by %.2g; not used", label, err)
                continue
            timings[label] = _time(run, x)
            runs[label] = run
        except Exception as e:  # noqa: BLE001 - a backend that does not work for this tower is simply skipped
            log.info("backend %s unavailable for %s: %s", label, tower.tower_id, str(e).splitlines()[0] if str(e) else e)
    if not timings:
        return None
    best = min(timings, key=timings.get)
    backend, mb = best.split("/")
    choice = {"backend": backend, "micro_batch": int(mb),
              "timings": {k: round(1.0 / v, 1) for k, v in timings.items()}}  # images per second
    _save_choice(choice_key, choice)
    log.info("embedding backend for %s: %s (%s)", tower.tower_id, best, choice["timings"])
    return FastImageEncoder(backend, int(mb), threads, runs[best], choice["timings"])


__all__ = ["FastImageEncoder", "fast_encoder", "fold_batchnorm", "export_onnx", "BACKENDS", "MIN_ITEMS"]
