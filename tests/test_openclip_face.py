"""The open_clip-style face (clipforge.model.factory + the tensor paths of DualEncoder), checked with CLIP_benchmark's own
metric code (PyPI clip-benchmark==1.6.2, installed --no-deps by scripts/install.sh test) on a saved model: its
zero-shot classification and retrieval numbers must equal clipforge's own evaluation.

The classification images are saved with transparency (RGBA, LA, P with a transparent index) on a transparent
background: clipforge's evaluation reads them from disk (alpha composited on white) and CLIP_benchmark gets the
PIL images as opened, so the numbers agree only when the preprocess composites as clipforge decodes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import clipforge
from clipforge.data.descriptions import DEFAULT_TEMPLATES, from_templates
from clipforge.data.images import load_image
from clipforge.errors import ClipforgeError
from clipforge.evaluate.retrieval import retrieval_metrics
from clipforge.evaluate.zeroshot import ZeroShotClassifier, evaluate_zeroshot
from clipforge.model.dual_encoder import DualEncoder, TextTokens

from captionutil import make_caption_set
from useutil import SHAPES, draw, trained_model_dir

cb_cls = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
cb_ret = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")

TOL = 0.005
MODES = ("RGBA", "LA", "P", "RGB")


@pytest.fixture(scope="module")
def face():
    model, pre_train, pre_val = clipforge.create_model_and_transforms(pretrained=trained_model_dir())
    return model, pre_train, pre_val, clipforge.get_tokenizer(trained_model_dir())


def _transparent(img: Image.Image, mode: str) -> Image.Image:
    """The shape on a transparent background whose hidden colour is black (what many PNG writers leave)."""
    rgba = img.convert("RGBA")
    a = np.asarray(rgba).copy()
    bg = (a[..., :3] > 245).all(-1)
    a[bg] = 0
    out = Image.fromarray(a, "RGBA")
    if mode == "LA":
        return out.convert("LA")
    if mode == "P":
        p = out.convert("RGB").quantize(64)
        idx = np.asarray(p).copy()
        idx[bg] = 255
        q = Image.fromarray(idx, "P")
        pal = p.getpalette()
        q.putpalette(pal + [0] * (768 - len(pal)))
        q.info["transparency"] = 255
        return q
    return out if mode == "RGBA" else img


def _shape_files(root, per_class: int = 5, seed: int = 7):
    rng = np.random.RandomState(seed)
    paths, labels = [], []
    for c, kind in enumerate(SHAPES):
        for i in range(per_class):
            p = root / f"{kind}_{i}.png"
            _transparent(draw(kind, rng), MODES[i % len(MODES)]).save(p)
            paths.append(p)
            labels.append(c)
    return paths, np.array(labels)


class _Classified(torch.utils.data.Dataset):
    def __init__(self, paths, labels, preprocess, classes):
        self.paths, self.labels, self.preprocess, self.classes = paths, labels, preprocess, classes

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            im.load()
            return self.preprocess(im), int(self.labels[i])


def _accuracy(output, target, topk=(1,)):
    """CLIP_benchmark 1.6.2's ``accuracy`` with ``.item()`` for its ``float(<1-element array>)``, which NumPy >= 2.4
    refuses (TypeError: only 0-dimensional arrays can be converted to Python scalars); same arithmetic."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def test_clip_benchmark_zeroshot_classification_equals_clipforge(face, tmp_path, monkeypatch):
    model, _, pre_val, tokenizer = face
    monkeypatch.setattr(cb_cls, "accuracy", _accuracy)
    paths, labels = _shape_files(tmp_path)
    classes = list(SHAPES)
    templates = [t.replace("{}", "{c}") for t in DEFAULT_TEMPLATES]
    loader = torch.utils.data.DataLoader(_Classified(paths, labels, pre_val, classes), batch_size=7)
    cb = cb_cls.evaluate(model, loader, tokenizer, classes, templates, "cpu", amp=False, save_clf=tmp_path / "clf.pt")

    images = [load_image(p)[0] for p in paths]
    ours = evaluate_zeroshot(model, images, labels, classes, templates=list(DEFAULT_TEMPLATES))
    print(f"\nzero-shot: CLIP_benchmark {cb} | clipforge {ours}")
    assert abs(cb["acc1"] - ours["acc1"]) <= TOL
    assert abs(cb["mean_per_class_recall"] - ours["mean_per_class_recall"]) <= TOL
    assert ours["acc1"] > 0.5  # a real model, not two equal failures

    # Underneath: the same class weights and image embeddings.
    w = torch.load(tmp_path / "clf.pt")  # CLIP_benchmark's zero_shot_classifier weights, (D, C)
    zs = ZeroShotClassifier(model, from_templates(classes, list(DEFAULT_TEMPLATES)))
    torch.testing.assert_close(w, zs.weights.T, atol=1e-5, rtol=0)
    with torch.no_grad():
        emb = model.encode_image(torch.stack([pre_val(Image.open(p)) for p in paths]))
    np.testing.assert_allclose(emb.numpy(), model.encode_image(images), atol=1e-5)


def _collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def test_clip_benchmark_retrieval_equals_clipforge(face, tmp_path):
    model, _, pre_val, tokenizer = face
    csv = make_caption_set(tmp_path, copies=1)  # one image per colour x shape: no two images alike, so no ties
    rows = [ln.split(",", 1) for ln in csv.read_text().splitlines()[1:]]
    names = list(dict.fromkeys(r[0] for r in rows))
    caps = {n: [c.strip('"') for f, c in rows if f == n] for n in names}
    images = [load_image(tmp_path / "images" / n)[0] for n in names]
    data = [(pre_val(im), caps[n]) for n, im in zip(names, images)]
    loader = torch.utils.data.DataLoader(data, batch_size=8, collate_fn=_collate)
    cb = cb_ret.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])

    texts = [c for n in names for c in caps[n]]
    owner = [i for i, n in enumerate(names) for _ in caps[n]]
    ours = retrieval_metrics(model.encode_image(images), model.encode_text(texts), owner)
    print(f"\nretrieval: CLIP_benchmark {cb} | clipforge {ours}")
    for k in (1, 5, 10):
        # CLIP_benchmark's "image_retrieval" is text -> image; its "text_retrieval" is image -> text.
        assert abs(cb[f"image_retrieval_recall@{k}"] - ours[f"text_to_image_R@{k}"]) <= TOL
        assert abs(cb[f"text_retrieval_recall@{k}"] - ours[f"image_to_text_R@{k}"]) <= TOL


def test_preprocess_any_mode_composites_alpha_on_white(face):
    model, pre_train, pre_val, _ = face
    img = draw("circle", np.random.RandomState(0))
    want = pre_val(img)
    size = model.image_tower.prepare([img]).shape[-1]
    assert want.shape == (3, size, size) and want.dtype == torch.float32 and want.is_contiguous()
    for mode in ("RGBA", "LA", "P"):
        t = _transparent(img, mode)
        white = Image.alpha_composite(Image.new("RGBA", t.size, "white"), t.convert("RGBA")).convert("RGB")
        torch.testing.assert_close(pre_val(t), pre_val(white))
        if mode != "P":  # a plain convert("RGB") shows the hidden black background: the composite is not a no-op
            assert not torch.allclose(pre_val(t), model.image_tower.prepare([t.convert("RGB")])[0], atol=0.05)
    torch.testing.assert_close(pre_val(_transparent(img, "RGBA")), want, atol=0.05, rtol=0)
    for mode in ("L", "CMYK", "I;16"):
        arr = np.asarray(img.convert("L"), dtype=np.uint16) * (257 if mode == "I;16" else 1)
        im = Image.fromarray(arr.astype(np.uint16)) if mode == "I;16" else img.convert(mode)
        assert im.mode == mode and pre_val(im).shape == want.shape
    torch.testing.assert_close(pre_train(img), want)
    with pytest.raises(TypeError):
        pre_val(np.zeros((8, 8, 3), np.uint8))


def test_forward_and_tensor_paths_match_the_friendly_ones(face):
    model, _, pre_val, tokenizer = face
    imgs = [draw(k, np.random.RandomState(i)) for i, k in enumerate(SHAPES)]
    texts = [f"a {k}" for k in SHAPES]
    tokens = tokenizer(texts).to("cpu")
    assert isinstance(tokens, TextTokens) and len(tokens) == len(texts)
    with torch.no_grad():
        out = model(torch.stack([pre_val(i) for i in imgs]), tokens)
    img_f, txt_f, scale = out[:3]
    assert len(out) == (4 if model.similarity.logit_bias is not None else 3)
    np.testing.assert_allclose(img_f.numpy(), model.encode_image(imgs), atol=1e-5)
    np.testing.assert_allclose(txt_f.numpy(), model.encode_text(texts), atol=1e-5)
    torch.testing.assert_close(img_f.norm(dim=-1), torch.ones(len(imgs)))
    assert isinstance(scale, torch.Tensor) and scale.item() == pytest.approx(model.similarity.scale.item())
    # open_clip's logits ranking is the model's own ranking
    logits = (scale * img_f @ txt_f.T).numpy()
    np.testing.assert_array_equal(logits.argmax(1), model.similarity_matrix(img_f.numpy(), txt_f.numpy()).argmax(1))
    # the tensor path is differentiable (open_clip fine-tuning loops backprop through it)
    x = torch.stack([pre_val(i) for i in imgs])
    model.encode_image(x, normalize=True).sum().backward()
    assert any(p.grad is not None for p in model.image_head.parameters())
    model.zero_grad(set_to_none=True)
    with pytest.raises(TypeError):
        model.encode_text(tokens.inputs["input_ids"])
    assert clipforge.get_tokenizer(model=model)("a circle").inputs["input_ids"].shape[0] == 1


def test_friendly_encode_restores_the_mode(face):
    model, *_ = face
    img = [draw("square", np.random.RandomState(3))]
    model.train()
    model.encode_image(img)
    model.encode_text(["a square"])
    model.similarity_matrix(np.zeros((1, 384), np.float32), np.zeros((1, 384), np.float32))
    assert model.training and model.image_head.training
    assert not model.image_tower.training  # locked towers stay in eval mode while the heads train
    model.eval()
    model.encode_image(img)
    assert not model.training


def test_from_tower_ids_and_a_frozen_text_tower():
    """An untrained head over two tower ids; a frozen numpy/C text tower's tokens are its strings."""
    model, _, pre_val = clipforge.create_model_and_transforms(
        image_tower="pkg:efficientnet-lite0", text_tower="pkg:e5-small-query", image_size=64)
    tok = clipforge.get_tokenizer(text_tower="pkg:e5-small-query")
    tokens = tok(["a circle", "一个圆形"])
    assert tokens.to("cpu") is tokens and tokens.inputs == ["a circle", "一个圆形"]
    with torch.no_grad():
        t = model.encode_text(tokens)
        i = model.encode_image(pre_val(draw("circle", np.random.RandomState(0)))[None])
    np.testing.assert_allclose(t.numpy(), model.encode_text(["a circle", "一个圆形"]), atol=1e-6)
    assert i.shape == (1, model.head_cfg.embed_dim) and pre_val.prepare.__self__ is model.image_tower
    with pytest.raises(ClipforgeError, match="not both"):
        clipforge.create_model_and_transforms(trained_model_dir(), image_tower="pkg:efficientnet-lite0")
    with pytest.raises(ClipforgeError, match="not a saved clipforge model"):
        clipforge.get_tokenizer("ViT-B-32")


def test_siamese_forward_says_why(face):
    from clipforge.config import HeadConfig
    base, _, pre_val, tokenizer = face
    m = DualEncoder(base.image_tower, base.text_tower, HeadConfig(similarity="siamese", text_head=True, embed_dim=32),
                    tower_opts=base.tower_opts).eval()
    x = pre_val(draw("line", np.random.RandomState(1)))[None]
    with torch.no_grad():
        img, txt = m.encode_image(x), m.encode_text(tokenizer(["a line"]))
        assert m.logits(img, txt).shape == (1, 1)
        with pytest.raises(ClipforgeError, match="Siamese"):
            m(x, tokenizer(["a line"]))
