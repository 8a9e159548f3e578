"""The text tower on ONNX Runtime for the web service: same numbers as torch, a fraction of the overhead.

A small-batch BERT forward in eager PyTorch spends much of its time in Python dispatch, holding the GIL that the
event loop needs; ONNX Runtime runs the whole graph in C++ with the GIL released. The tower is exported once per
tower fingerprint (``torch.onnx.export``, needs the ``onnx`` package) into a cache folder and loaded from there
afterwards. Only the tower runs in ORT; the model's text head stays in torch, so any clipforge model works.

``text_encoder(model, runtime)`` returns a ``texts -> embeddings`` function: ``runtime='onnx'`` insists,
``'auto'`` falls back to torch when onnxruntime is missing or the tower is not a transformers text tower.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from clipforge.errors import ClipforgeError
from clipforge.util.extras import require
from clipforge.util.paths import cache_dir

log = logging.getLogger("clipforge.serve")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Wrap(torch.nn.Module):
    def __init__(self, tower, names):
        super().__init__()
        self.tower, self.names = tower, names

    def forward(self, *tensors):
        return self.tower(dict(zip(self.names, tensors)))


def _cache_dir() -> Path:
    return cache_dir("onnx")


def export_text_tower(tower, path: Path) -> Path:
    example = tower.prepare(["a photo of a cat on a sofa", "dog"])
    names = [k for k in INPUTS if k in example]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Wrap(tower.eval(), names), tuple(example[k] for k in names), str(tmp), dynamo=False,
                              input_names=names, output_names=["embedding"], opset_version=17,
                              dynamic_axes={**{k: {0: "batch", 1: "tokens"} for k in names}, "embedding": {0: "batch"}})
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - any exporter failure means: use torch
        Path(tmp).unlink(missing_ok=True)
        raise ClipforgeError(f"cannot export the text tower to ONNX: {e}".splitlines()[0]) from None
    return path


class OnnxTextTower:
    """``encode(texts)`` like ``Tower.encode``, on ONNX Runtime with ``threads`` intra-op threads."""

    def __init__(self, tower, threads: int = 1, cache_dir: str | Path | None = None):
        ort = require("onnxruntime", "onnx", "the service's ONNX text tower")
        if tower.hf_tokenizer is None:
            raise ClipforgeError(f"text tower {tower.tower_id} is not a transformers tower; ONNX path unavailable")
        self.tower = tower
        path = Path(cache_dir or _cache_dir()) / f"text-{tower.fingerprint()}.onnx"
        if not path.is_file():
            export_text_tower(tower, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str]) -> np.ndarray:
        batch = self.tower.tokenizer(list(texts), padding=True, truncation=True, max_length=self.tower.max_length,
                                     return_tensors="np")
        return self.session.run(None, {k: batch[k].astype(np.int64) for k in self.names})[0]


def text_encoder(model, runtime: str = "auto", threads: int = 1):
    """``texts -> (n, D) embeddings`` through the model's text tower and head, on ``runtime`` ('auto'|'onnx'|'torch')."""
    if runtime not in ("auto", "onnx", "torch"):
        raise ClipforgeError(f"text runtime must be auto, onnx or torch, not '{runtime}'")
    if runtime != "torch":
        try:
            onnx_tower = OnnxTextTower(model.text_tower, threads)
        except (ImportError, ClipforgeError) as e:
            if runtime == "onnx":
                raise ClipforgeError(f"ONNX text runtime unavailable: {e}") from None
            log.info("text tower on torch (%s)", e)
        else:
            @torch.inference_mode()
            def encode(texts):
                feats = torch.from_numpy(onnx_tower.encode(texts))
                return model.embed_text_features(feats).numpy()
            encode.runtime = "onnx"
            return encode

    def encode(texts):
        return model.encode_text(list(texts))
    encode.runtime = "torch"
    return encode
