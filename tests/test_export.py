"""Interop: the text side as a sentence-transformers folder that loads WITHOUT clipforge (a `python -I` subprocess
with clipforge blocked) and gives the same vectors, and both towers + heads on ONNX Runtime within 1e-4 of PyTorch."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.config import HeadConfig
from clipforge.errors import ClipforgeError
from clipforge.model.export import OnnxDualEncoder, to_onnx, to_sentence_transformers
from clipforge.model.dual_encoder import DualEncoder
from clipforge.towers import build_tower

TEXTS = ["a photo of a cat on the sofa", "一只猫", "A red fire truck.", "小狗在草地上跑", ""]


@pytest.fixture(scope="module")
def towers():
    return build_tower("pkg:efficientnet-lite0", "image", image_size=64), build_tower("pkg:all-MiniLM-L6-v2", "text")


def _scramble_normalizer(proj, dim, seed):
    """Non-trivial training statistics (and one dead feature) so that folding them into Dense is really tested."""
    g = torch.Generator().manual_seed(seed)
    proj.mean.copy_(torch.randn(dim, generator=g) * 0.02)
    std = torch.rand(dim, generator=g) * 0.05 + 0.02
    std[3] = float("inf")
    proj.std.copy_(std)


@pytest.fixture(scope="module")
def mlp_model(towers):
    torch.manual_seed(0)
    m = DualEncoder(*towers, HeadConfig(kind="mlp", hidden=48, embed_dim=32, text_head=True), ensemble=2)
    _scramble_normalizer(m.text_head.members[0], 384, 1)
    return m.eval()


@pytest.fixture(scope="module")
def linear_model(towers):
    torch.manual_seed(1)
    m = DualEncoder(*towers, HeadConfig(kind="linear", embed_dim=24, text_head=True))
    _scramble_normalizer(m.text_head.members[0], 384, 2)
    return m.eval()


@pytest.fixture(scope="module")
def bridge_model(towers):
    """The Tux Paint default's shape: no text head, ConSE label bridge blended in."""
    torch.manual_seed(2)
    m = DualEncoder(*towers, HeadConfig(kind="mlp", hidden=32))
    m.attach_bridge(torch.randn(1000, 384), 0.35)
    return m.eval()


LOAD_WITHOUT_CLIPFORGE = textwrap.dedent("""
    import sys, json, importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "clipforge" or name.startswith("clipforge."):
                raise ImportError("clipforge is not installed here")
    sys.meta_path.insert(0, Block())
    import numpy as np
    from sentence_transformers import SentenceTransformer
    texts = json.loads(sys.argv[1])
    for folder, out in zip(sys.argv[2::2], sys.argv[3::2]):
        st = SentenceTransformer(folder, device="cpu")
        np.save(out, st.encode(texts, convert_to_numpy=True, batch_size=8))
    assert not any(m == "clipforge" or m.startswith("clipforge.") for m in sys.modules), "clipforge was imported"
    print("ok")
""")


def test_sentence_transformers_folder_loads_without_clipforge_and_matches(tmp_path, mlp_model, linear_model, bridge_model):
    args = []
    for name, model in (("mlp", mlp_model), ("linear", linear_model), ("bridge", bridge_model)):
        to_sentence_transformers(model, tmp_path / name)
        args += [str(tmp_path / name), str(tmp_path / f"{name}.npy")]
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-I", "-c", LOAD_WITHOUT_CLIPFORGE, json.dumps(TEXTS, ensure_ascii=False), *args],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
    for name, model in (("mlp", mlp_model), ("linear", linear_model), ("bridge", bridge_model)):
        got = np.load(tmp_path / f"{name}.npy")
        want = model.encode_text(TEXTS)
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=2e-5, err_msg=name)
    modules = json.loads((tmp_path / "mlp" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize", "Dense", "Dense", "Normalize"]


def test_sentence_transformers_export_refuses_what_it_cannot_express(tmp_path, towers):
    use = DualEncoder(towers[0], build_tower("pkg:use-m3", "text"), HeadConfig(text_head=True, embed_dim=16))
    with pytest.raises(ClipforgeError, match="not a transformers model"):
        to_sentence_transformers(use, tmp_path / "use")
    both = DualEncoder(*towers, HeadConfig(text_head=True, embed_dim=16))
    both.attach_bridge(torch.randn(1000, 384), 0.3)
    with pytest.raises(ClipforgeError, match="bridge"):
        to_sentence_transformers(both, tmp_path / "both")


def _images():
    rng = np.random.RandomState(0)
    return [Image.fromarray(rng.randint(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(3)]


@pytest.mark.parametrize("which", ["mlp", "bridge"])
def test_onnx_export_of_both_towers_matches_pytorch(tmp_path, which, mlp_model, bridge_model):
    model = {"mlp": mlp_model, "bridge": bridge_model}[which]
    manifest = to_onnx(model, tmp_path / "onnx")
    assert manifest["max_abs_diff"]["image"] < 1e-4 and manifest["max_abs_diff"]["text"] < 1e-4, manifest
    ort_model = OnnxDualEncoder(tmp_path / "onnx")
    np.testing.assert_allclose(ort_model.encode_text(TEXTS), model.encode_text(TEXTS), atol=1e-4)
    np.testing.assert_allclose(ort_model.encode_image(_images()), model.encode_image(_images()), atol=1e-4)
    assert (tmp_path / "onnx" / "tokenizer").is_dir() and json.loads((tmp_path / "onnx" / "preprocess.json").read_text())["size"] == 64


def test_onnx_export_with_a_frozen_multilingual_tower_takes_its_features(tmp_path, towers):
    torch.manual_seed(3)
    model = DualEncoder(towers[0], build_tower("pkg:use-m3", "text"), HeadConfig(kind="mlp", hidden=32, embed_dim=24, text_head=True)).eval()
    manifest = to_onnx(model, tmp_path / "onnx")
    assert "text_features" in manifest["text"]["inputs"] and manifest["max_abs_diff"]["text"] < 1e-4
    np.testing.assert_allclose(OnnxDualEncoder(tmp_path / "onnx").encode_text(TEXTS), model.encode_text(TEXTS), atol=1e-4)


def test_cli_export(tmp_path, towers):
    from typer.testing import CliRunner

    from clipforge.cli import app
    torch.manual_seed(4)
    DualEncoder(towers[0], build_tower("pkg:use-m3", "text"), HeadConfig(kind="linear", embed_dim=16, text_head=True),
                tower_opts={"image_size": 64}).save_pretrained(tmp_path / "m")
    r = CliRunner().invoke(app, ["export", str(tmp_path / "m"), "--format", "onnx", "--out", str(tmp_path / "onnx")])
    assert r.exit_code == 0 and "max abs diff" in r.output, r.output
    assert (tmp_path / "onnx" / "image.onnx").is_file() and (tmp_path / "onnx" / "text.onnx").is_file()
    r = CliRunner().invoke(app, ["export", str(tmp_path / "m"), "--format", "sentence-transformers", "--out", str(tmp_path / "st")])
    assert r.exit_code == 2 and "not a transformers model" in r.output
    r = CliRunner().invoke(app, ["export", str(tmp_path / "m"), "--format", "tflite", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--format" in r.output
