"""Interop: take a clipforge model out of clipforge (CLIP-Chinese exports its text tower alone; AltCLIP ships ONNX).

* ``to_sentence_transformers(model, dir)``: the TEXT side (tower + text head + label-bridge expansion) as a plain
  sentence-transformers folder, loadable with ``SentenceTransformer(dir)`` where clipforge is not installed and
  giving the same vectors as ``model.encode_text``. Module mapping:

    HF text tower (MiniLM, hf:...)   -> Transformer + Pooling(mean) [+ Normalize when the tower normalises]
    st:... tower                     -> its own modules, unchanged
    no text head                     -> Normalize
    linear head                      -> Dense(identity), the training-set standardisation folded into W and b; Normalize
    MLP head                         -> Dense(GELU) + Dense(identity), standardisation folded in; Normalize
    ConSE label bridge, no text head -> Dense(D -> 2D, [sqrt(1-a) I; sqrt(a) I], no bias): the blended vector

  Not expressible with stock modules (a clear ClipforgeError says so): frozen numpy/C towers (pkg:use-m3,
  pkg:e5-small: not torch models), distilled students on them, from-scratch towers, and a text head together
  with the bridge (two separately normalised halves).

* ``to_onnx(model, dir)``: ``image.onnx`` (pre-processed pixels -> image embedding, the ImageNet bridge included)
  and ``text.onnx`` (token ids -> text embedding; for frozen numpy/C towers: tower features -> text embedding,
  as the tower itself cannot be traced), plus ``tokenizer/``, ``preprocess.json`` and ``export.json`` (what
  each graph takes). Each graph is checked on ONNX Runtime against PyTorch (max abs difference < 1e-4).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clipforge.errors import ClipforgeError
from clipforge.util.extras import require

TOLERANCE = 1e-4
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# -- sentence-transformers ------------------------------------------------------------------------------------

def _folded_linears(proj) -> list[tuple[torch.Tensor, torch.Tensor | None, str]]:
    """A ``heads.Projection`` as (weight, bias, activation) layers with its standardisation folded into the first.

    (x - mean) / std then W x + b  ==  (W / std) x + (b - W (mean / std)); a dead feature (std = inf) gets weight 0."""
    inv = torch.where(torch.isinf(proj.std), torch.zeros_like(proj.std), 1.0 / proj.std)
    mean = torch.where(torch.isinf(proj.std), torch.zeros_like(proj.mean), proj.mean)
    linears = [m for m in proj.net.modules() if isinstance(m, nn.Linear)] if isinstance(proj.net, nn.Sequential) \
        else [proj.net]
    if isinstance(proj.net, nn.Sequential):
        acts = [m for m in proj.net if not isinstance(m, (nn.Linear, nn.Dropout))]
        if len(linears) != 2 or len(acts) != 1 or not isinstance(acts[0], nn.GELU) or acts[0].approximate != "none":
            raise ClipforgeError("only linear and Linear-GELU-Linear MLP text heads can be expressed as "
                                 "sentence-transformers Dense modules")
    first = linears[0]
    w = first.weight.detach() * inv[None, :]
    b = first.bias.detach() - first.weight.detach() @ (mean * inv)
    layers = [(w, b, "gelu" if len(linears) == 2 else "identity")]
    if len(linears) == 2:
        layers.append((linears[1].weight.detach().clone(), linears[1].bias.detach().clone(), "identity"))
    return layers


def _transformer_modules(tower, tmp: Path) -> list:
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from clipforge.towers.text import HFTextTower, STTextTower
    if isinstance(tower, STTextTower):
        return list(tower.st)
    if not isinstance(tower, HFTextTower):
        raise ClipforgeError(f"the text tower {tower.tower_id} is not a transformers model, so sentence-transformers "
                             "cannot load it; export to ONNX instead (its head only: clipforge export --format onnx), "
                             "or keep using clipforge")
    tower.model.save_pretrained(str(tmp))
    tower.tokenizer.save_pretrained(str(tmp))
    mods = [Transformer(str(tmp), max_seq_length=tower.max_length),
            Pooling(tower.dim, pooling_mode="mean")]
    if tower.normalize:
        mods.append(Normalize())
    return mods


def _head_modules(model) -> list:
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize
    mods = []
    if model.text_head is not None:
        if model.bridge is not None:
            raise ClipforgeError("a text head together with the ConSE label bridge (bridge.alpha > 0) cannot be expressed "
                                 "with sentence-transformers modules (two separately normalised halves); train with "
                                 "bridge.alpha=0, or export to ONNX, which keeps it")
        if len(model.text_head.members) != 1:
            raise ClipforgeError("an ensemble of text heads cannot be expressed as sentence-transformers modules")
        for w, b, act in _folded_linears(model.text_head.members[0]):
            mods.append(Dense(w.shape[1], w.shape[0], bias=True,
                              activation_function=nn.GELU() if act == "gelu" else nn.Identity(),
                              init_weight=w.clone(), init_bias=b.clone()))
        mods.append(Normalize())
    else:
        mods.append(Normalize())
        if model.bridge is not None:
            d, a = model.text_tower.dim, float(model.bridge_alpha)
            w = torch.cat([torch.eye(d) * math.sqrt(1 - a), torch.eye(d) * math.sqrt(a)])
            mods.append(Dense(d, 2 * d, bias=False, activation_function=nn.Identity(), init_weight=w))
    return mods


def to_sentence_transformers(model, out_dir: str | Path) -> Path:
    """Write the text side of ``model`` as a sentence-transformers folder (see the module doc)."""
    import tempfile

    from sentence_transformers import SentenceTransformer
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="clipforge-st-") as tmp:
        mods = _transformer_modules(model.text_tower, Path(tmp))
        mods += _head_modules(model)
        st = SentenceTransformer(modules=mods, device="cpu")
        if out.exists():
            shutil.rmtree(out)
        st.save(str(out))
    (out / "clipforge_export.json").write_text(json.dumps(
        {"from": "clipforge", "text_tower": model.text_tower.tower_id, "image_tower": model.image_tower.tower_id,
         "text_head": model.head_cfg.kind if model.text_head is not None else None,
         "bridge_alpha": model.bridge_alpha if model.bridge is not None else 0.0,
         "note": "text side only: SentenceTransformer(dir).encode(texts) == clipforge encode_text(texts)"}, indent=1))
    return out


# -- ONNX -------------------------------------------------------------------------------------------------------

class _ImageGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, pixel_values):
        return self.m.embed_image_features(self.m.image_tower(pixel_values))


class _TextGraph(nn.Module):
    """Token tensors -> tower -> text embedding (HF towers), or tower features -> embedding (frozen towers)."""

    def __init__(self, model, names: list[str] | None):
        super().__init__()
        self.m, self.names = model, names

    def forward(self, *tensors):
        if self.names is None:
            feats = tensors[0]
            tower = self.m.text_tower
            if tower.is_student:  # a distilled student: base features in, projection in the graph
                feats = tower.project(feats)
        else:
            feats = self.m.text_tower(dict(zip(self.names, tensors)))
        return self.m.embed_text_features(feats)


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output: str, dynamic: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, input_names=input_names, output_names=[output],
                          opset_version=17, dynamic_axes={**dynamic, output: {0: "batch"}})


def _session(path: Path):
    ort = require("onnxruntime", "onnx", "running an ONNX export")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(2, os.cpu_count() or 1))
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _text_inputs(model) -> tuple[list[str] | None, dict]:
    """Names and example tensors of the text graph's inputs."""
    from clipforge.towers.text import HFTextTower, STTextTower
    tower = model.text_tower
    examples = ["a photo of a cat on the sofa", "一只猫", "dog"]
    if isinstance(tower, (HFTextTower, STTextTower)):
        enc = tower.prepare(examples)
        names = [k for k in TEXT_INPUTS if k in enc]
        return names, {k: enc[k] for k in names}
    if not tower.weights_from_id and not tower.is_student:
        raise ClipforgeError(f"ONNX export of the from-scratch text tower {tower.tower_id} is not supported")
    feats = tower.base_features(examples) if tower.is_student else torch.from_numpy(tower.encode(examples))
    return None, {"text_features": feats.float()}


def to_onnx(model, out_dir: str | Path, verify: bool = True) -> dict:
    """Write ``image.onnx`` + ``text.onnx`` (+ tokenizer, preprocessing) and check them on ONNX Runtime."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    manifest: dict = {"format": "clipforge-onnx/1", "image_tower": model.image_tower.tower_id,
                      "text_tower": model.text_tower.tower_id, "opset": 17, "max_abs_diff": {}}
    # image side: pre-processed pixels in (preprocess.json says how), embedding out
    pre = model.image_tower.pre
    size = model.image_tower.input_size or 224
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, size, size)
    _export(_ImageGraph(model), (pixels,), out / "image.onnx", ["pixel_values"], "image_embedding",
            {"pixel_values": {0: "batch"}})
    if pre is not None:
        (out / "preprocess.json").write_text(json.dumps({**pre.key(), "layout": "NCHW float32",
                                                         "resize": "bilinear with antialias to size x size, no crop",
                                                         "formula": "((rgb / 255) [inverted if invert] - mean) / std"}, indent=1))
    manifest["image"] = {"file": "image.onnx", "inputs": {"pixel_values": ["batch", 3, size, size]},
                         "output": "image_embedding"}
    # text side
    names, example = _text_inputs(model)
    if names is None:
        _export(_TextGraph(model, None), (example["text_features"],), out / "text.onnx", ["text_features"],
                "text_embedding", {"text_features": {0: "batch"}})
        base = model.text_tower.base if model.text_tower.is_student else model.text_tower
        manifest["text"] = {"file": "text.onnx", "inputs": {"text_features": ["batch", int(example["text_features"].shape[1])]},
                            "output": "text_embedding",
                            "note": f"the text tower {base.tower_id} is a numpy/C encoder outside the graph: "
                                    f"feed its features (e.g. {base.tower_id} encode(texts))"}
    else:
        _export(_TextGraph(model, names), tuple(example[k] for k in names), out / "text.onnx", names,
                "text_embedding", {k: {0: "batch", 1: "tokens"} for k in names})
        tok = model.text_tower.hf_tokenizer
        if tok is not None:
            tok.save_pretrained(str(out / "tokenizer"))
        manifest["text"] = {"file": "text.onnx", "inputs": {k: ["batch", "tokens"] for k in names},
                            "output": "text_embedding", "tokenizer": "tokenizer/",
                            "max_length": model.text_tower.max_length}
    if verify:
        with torch.inference_mode():
            ref_img = _ImageGraph(model)(pixels).numpy()
            ref_txt = _TextGraph(model, names)(*example.values()).numpy()
        got_img = _session(out / "image.onnx").run(None, {"pixel_values": pixels.numpy()})[0]
        got_txt = _session(out / "text.onnx").run(None, {k: v.numpy() for k, v in example.items()})[0]
        manifest["max_abs_diff"] = {"image": float(np.abs(got_img - ref_img).max()),
                                    "text": float(np.abs(got_txt - ref_txt).max())}
        bad = {k: v for k, v in manifest["max_abs_diff"].items() if not v < TOLERANCE}
        if bad:
            raise ClipforgeError(f"ONNX Runtime differs from PyTorch by {bad} (tolerance {TOLERANCE})")
    (out / "export.json").write_text(json.dumps(manifest, indent=1))
    return manifest


class OnnxDualEncoder:
    """Run an ``to_onnx`` folder with ONNX Runtime: ``encode_image`` (PIL images / uint8 arrays) and
    ``encode_text`` (strings; the tokenizer folder or, for frozen towers, the tower named in export.json)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.manifest = json.loads((self.dir / "export.json").read_text())
        self.image = _session(self.dir / "image.onnx")
        self.text = _session(self.dir / "text.onnx")
        self._tok = self._tower = None

    def encode_image(self, images) -> np.ndarray:
        from clipforge.towers.base import ImagePreprocess
        p = json.loads((self.dir / "preprocess.json").read_text())
        pre = ImagePreprocess(p["size"], tuple(p["mean"]), tuple(p["std"]), p["invert"])
        return self.image.run(None, {"pixel_values": pre(images).contiguous().numpy()})[0]

    def encode_text(self, texts: list[str]) -> np.ndarray:
        inputs = self.manifest["text"]["inputs"]
        if "text_features" in inputs:
            if self._tower is None:
                from clipforge.towers import build_tower
                base = self.manifest["text_tower"].removeprefix("distill:")
                self._tower = build_tower(base, "text")
            feed = {"text_features": self._tower.encode(list(texts))}
        else:
            if self._tok is None:
                from transformers import AutoTokenizer
                self._tok = AutoTokenizer.from_pretrained(str(self.dir / "tokenizer"))
            enc = self._tok(list(texts), padding=True, truncation=True, return_tensors="np",
                            max_length=self.manifest["text"].get("max_length") or 512)
            feed = {k: enc[k].astype(np.int64) for k in inputs}
        return self.text.run(None, feed)[0]


__all__ = ["to_sentence_transformers", "to_onnx", "OnnxDualEncoder", "TOLERANCE"]
