"""Shared by the index / serve / browser tests: a tiny shape collection and a model aligned on it, made once.

The model is a DualEncoder on the packaged towers (EfficientNet-Lite0 at 64 px + MiniLM) whose head is fitted
in a second on coloured shapes, so text queries such as "a circle" have right answers to check.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "line")
ZH_SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "line": "直线"}
_CACHE: dict = {}
# The web service exports its text tower to ONNX once per tower; keep that export out of the user's home.
os.environ.setdefault("CLIPFORGE_ONNX_CACHE", tempfile.mkdtemp(prefix="clipforge-onnx-"))


def draw(kind: str, rng: np.random.RandomState, size: int = 48) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    o = rng.randint(0, 8)
    color = tuple(int(v) for v in rng.randint(0, 160, 3))
    if kind == "circle":
        d.ellipse([6 + o, 6 + o, 38 + o // 2, 38 + o // 2], fill=color)
    elif kind == "square":
        d.rectangle([6 + o, 6 + o, 38 + o // 2, 38 + o // 2], fill=color)
    elif kind == "triangle":
        d.polygon([(24, 4 + o), (4 + o, 42), (44 - o, 42)], fill=color)
    else:
        d.line([(4, 4 + o), (44, 44 - o)], fill=color, width=5)
    return img


def make_shapes(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    """root/<shape>/<i>.png"""
    rng = np.random.RandomState(seed)
    for kind in SHAPES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(kind, rng).save(root / kind / f"{i}.png")
    return root


def fit_model(folder: Path, image_size: int = 64, ridge: float = 1.0, text: str = "pkg:all-MiniLM-L6-v2",
              zh_names: dict | None = None):
    """A DualEncoder on the packaged towers whose linear image head is fitted in closed form (ridge regression
    of each image's tower features onto its class's template-averaged text embedding): deterministic, seconds
    to make, and it does not depend on the training loop that other tests cover."""
    import torch
    from clipforge.config import HeadConfig
    from clipforge.data.descriptions import from_templates
    from clipforge.data.folders import load_image_folder
    from clipforge.model.dual_encoder import DualEncoder
    from clipforge.towers import build_tower
    image_tower = build_tower("pkg:efficientnet-lite0", "image", image_size=image_size).lock()
    text_tower = build_tower(text, "text").lock()
    model = DualEncoder(image_tower, text_tower, HeadConfig(kind="linear", embed_dim=text_tower.dim, text_head=False,
                                                          init_temperature=0.1 if zh_names is None else 0.01),
                        ensemble=1, tower_opts={"image_size": image_size, "invert": False})
    ds = load_image_folder(folder)
    x = torch.from_numpy(image_tower.encode([Image.open(p).convert("RGB") for p in ds.images]))
    desc = from_templates(ds.class_names)
    sentences = desc.sentences
    # zh_names: a class's target is its English AND Chinese prompts (the mixed-caption recipe); e5's cosines sit
    # close together, so that model gets the sharper temperature a trained one would learn (CLIP ends near 0.01).
    if zh_names is not None:
        sentences = [en + from_templates([zh_names[n]]).sentences[0] for en, n in zip(sentences, ds.class_names)]
    t = torch.from_numpy(np.stack([text_tower.encode(s).mean(0) for s in sentences]))
    t = torch.nn.functional.normalize(t, dim=-1)[torch.from_numpy(ds.labels)]
    head = model.image_head.members[0]
    head.fit_normalizer(x)
    xs = (x - head.mean) / head.std
    w = torch.linalg.solve(xs.T @ xs + ridge * torch.eye(xs.shape[1]), xs.T @ (t - t.mean(0)))
    with torch.no_grad():
        head.net.weight.copy_(w.T)
        head.net.bias.copy_(t.mean(0))
    return model.eval()


def trained_model_dir() -> Path:
    """A saved model fitted on a shape collection (see fit_model), made once per test session."""
    if "model" not in _CACHE:
        base = Path(tempfile.mkdtemp(prefix="clipforge-use-"))
        folder = make_shapes(base / "train", per_class=10, seed=1)
        fit_model(folder).save_pretrained(base / "model")
        _CACHE["model"] = base / "model"
        _CACHE["base"] = base
    return _CACHE["model"]


def bilingual_model_dir() -> Path:
    """The same, with the frozen multilingual text tower (pkg:e5-small-query): English or Chinese queries."""
    if "bilingual" not in _CACHE:
        base = Path(tempfile.mkdtemp(prefix="clipforge-use-zh-"))
        folder = make_shapes(base / "train", per_class=10, seed=1)
        fit_model(folder, text="pkg:e5-small-query", zh_names=ZH_SHAPES).save_pretrained(base / "model")
        _CACHE["bilingual"] = base / "model"
    return _CACHE["bilingual"]


def shared_index(tmp_root: Path | None = None):
    """(index dir, collection dir) of an index over a fresh shape collection, built once per session."""
    if "index" not in _CACHE:
        from clipforge.index import ImageIndex
        model = trained_model_dir()
        base = _CACHE["base"]
        coll = make_shapes(base / "collection", per_class=6, seed=7)
        (coll / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        ImageIndex.build(coll, model, base / "index", progress=False)
        _CACHE["index"] = (base / "index", coll)
    return _CACHE["index"]


def start_uvicorn(config):
    """Run a uvicorn server for ``config`` in a daemon thread; returns (server, thread) once it accepts connections."""
    import threading
    import time
    import uvicorn
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    return server, thread
