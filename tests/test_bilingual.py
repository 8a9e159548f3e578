"""Bilingual clipforge: multilingual frozen towers, save/load round trips, en+zh caption mixes, distillation on
parallel text (never the held-out fold), stage 2 from an init model, Chinese templates, CIFAR pickle loading and
CLIP_benchmark-style zero-shot, and the CLI commands."""
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from clipforge.pipelines import captions as caption
from benchmarks.bilingual import TuxData, split_indices
from clipforge.cli import app
from clipforge.config import CaptionRunConfig, HeadConfig, build_config
from clipforge.data.captions import CaptionDataset, folds
from clipforge.data.cifar import load_cifar, load_zeroshot_source
from clipforge.data.descriptions import from_templates
from clipforge.data.templates_zh import (CIFAR10_ZH, CIFAR100_ZH, FASHION_MNIST_ZH, ZH_TEMPLATES, is_chinese,
                                         template_set)
from clipforge.pipelines.distill import DistillTrainConfig, StudentConfig, agreement, distill, parallel_text
from clipforge.errors import ClipforgeError, ConfigError
from clipforge.evaluate.zeroshot import evaluate_zeroshot
from clipforge.model.dual_encoder import DualEncoder
from clipforge.towers import build_tower

from captionutil import make_caption_set

COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "black": "黑色", "white": "白色"}
THINGS = {"cat": "猫", "dog": "狗", "car": "汽车", "house": "房子", "bird": "鸟", "flower": "花", "boat": "船"}
PAIRS = [(f"a {c} {t}", f"一只{cz}的{tz}") for c, cz in COLOURS.items() for t, tz in THINGS.items()]


@pytest.fixture(scope="module")
def image_tower():
    return build_tower("pkg:efficientnet-lite0", "image", image_size=64)


@pytest.fixture(scope="module")
def minilm():
    return build_tower("pkg:all-MiniLM-L6-v2", "text")


@pytest.fixture(scope="module")
def teacher(image_tower, minilm):
    torch.manual_seed(0)
    return DualEncoder(image_tower, minilm, HeadConfig(kind="mlp", hidden=32), tower_opts={"image_size": 64}).eval()


@pytest.fixture(scope="module")
def student_model(teacher):
    en, zh = zip(*PAIRS)
    return distill(teacher, list(en), list(zh), StudentConfig(base="pkg:use-m3", hidden=256),
                   DistillTrainConfig(epochs=80, batch_size=64, lr=5e-3))


@pytest.mark.parametrize("tid,dim", [("pkg:use-m3", 512), ("pkg:e5-small", 384), ("pkg:e5-small-query", 384)])
def test_multilingual_towers_put_english_and_chinese_together(tid, dim):
    t = build_tower(tid, "text")
    e = t.encode(["a cat", "一只猫", "a red truck", "一辆红色的卡车", ""])
    assert e.shape == (5, dim) and e.dtype == np.float32 and np.allclose(np.linalg.norm(e[:4], axis=1), 1, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[3] and e[2] @ e[3] > e[2] @ e[1]
    assert t.is_locked and t.tower_id == tid
    with pytest.raises(ClipforgeError, match="cannot be unlocked"):
        t.unlock()


def test_e5_prefixes_are_distinct_cache_keys():
    a, b = build_tower("pkg:e5-small", "text"), build_tower("pkg:e5-small-query", "text")
    assert a.fingerprint() != b.fingerprint()
    assert not np.allclose(a.encode(["a cat"]), b.encode(["a cat"]))


@pytest.mark.parametrize("tid", ["pkg:use-m3", "pkg:e5-small"])
def test_save_and_load_rebuild_multilingual_towers_from_their_id(tmp_path, image_tower, tid):
    torch.manual_seed(1)
    m = DualEncoder(image_tower, build_tower(tid, "text"), HeadConfig(kind="mlp", hidden=32, embed_dim=16, text_head=True),
                    ensemble=2, tower_opts={"image_size": 64})
    m.text_head.fit_normalizer(torch.randn(20, m.text_tower.dim))
    m.save_pretrained(tmp_path / "m")
    from safetensors.torch import load_file
    assert not any(k.startswith("text_tower.") for k in load_file(str(tmp_path / "m" / "model.safetensors")))
    back = DualEncoder.from_pretrained(tmp_path / "m")
    assert back.text_tower.tower_id == tid
    texts = ["一只猫", "a dog"]
    np.testing.assert_allclose(back.encode_text(texts), m.encode_text(texts), atol=1e-6)
    img = np.random.RandomState(0).randint(0, 255, (2, 48, 48, 3), dtype=np.uint8)
    np.testing.assert_allclose(back.encode_image(list(img)), m.encode_image(list(img)), atol=1e-6)


def test_caption_language_mix_gives_every_image_both_captions():
    ds = CaptionDataset("t", [f"{i}.png" for i in range(3)], [["a cat"], ["a dog"], ["a bird"]],
                        {"zh": [["一只猫"], [], ["一只鸟", "a bird"]]})
    mix = ds.in_language("en+zh")
    assert mix.captions == [["a cat", "一只猫"], ["a dog"], ["a bird", "一只鸟"]]
    assert ds.in_language("zh").captions == [["一只猫"], ["一只鸟", "a bird"]]
    texts, owners = mix.pairs()
    assert len(texts) == 5 and owners.tolist() == [0, 0, 1, 2, 2]
    with pytest.raises(ClipforgeError, match="no 'fr' captions"):
        ds.in_language("en+fr")


def test_distilled_student_maps_chinese_onto_the_teacher_space(teacher, student_model):
    en, zh = map(list, zip(*PAIRS))
    a = agreement(teacher, student_model, en, zh)
    assert a["cos_student_en"] > 0.8 and a["cos_student_other"] > 0.8, a
    t = teacher.encode_text(en)
    s = student_model.encode_text(zh)
    hit = (np.argmax(s @ t.T, 1) == np.arange(len(en))).mean()
    assert hit > 0.8, hit
    # the image side is the teacher's, untouched
    assert torch.equal(student_model.image_head.members[0].net[0].weight, teacher.image_head.members[0].net[0].weight)
    assert student_model.text_tower.tower_id == "distill:pkg:use-m3"


def test_distill_mse_loss_and_linear_student_run(teacher):
    en, zh = map(list, zip(*PAIRS[:12]))
    m = distill(teacher, en, zh, StudentConfig(base="pkg:use-m3", kind="linear"),
                DistillTrainConfig(loss="mse", epochs=3, batch_size=8))
    assert m.encode_text(zh).shape == (12, 384) and m.distill_history[-1]["loss"] < m.distill_history[0]["loss"]


def test_distilled_model_round_trips_and_its_cache_key_follows_the_weights(tmp_path, student_model):
    student_model.save_pretrained(tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["text_tower"] == "distill:pkg:use-m3" and cfg["tower_configs"]["text"]["base"] == "pkg:use-m3"
    back = DualEncoder.from_pretrained(tmp_path / "d")
    texts = ["一只红色的猫", "a blue boat"]
    np.testing.assert_allclose(back.encode_text(texts), student_model.encode_text(texts), atol=1e-6)
    assert back.text_tower.fingerprint() == student_model.text_tower.fingerprint()
    with torch.no_grad():
        back.text_tower.head.net[0].bias.add_(1.0)
    assert back.text_tower.fingerprint() != student_model.text_tower.fingerprint()


def _fake_tux(n=20):
    return CaptionDataset("tux-paint", [f"{i}.png" for i in range(n)], [[f"caption {i}"] for i in range(n)],
                          {"zh": [[f"说明 {i}"] if i % 3 else [] for i in range(n)]})


def test_parallel_text_never_uses_the_held_out_fold(monkeypatch):
    import clipforge.pipelines.distill as d
    monkeypatch.setattr(d, "load_caption_source", lambda spec: _fake_tux())
    for fold in range(5):
        en, zh = parallel_text(["tux-paint"], "zh", fold=fold, k=5, split_seed=0)
        held = set(folds(20, 5, 0)[fold].tolist())
        used = {int(s.split()[1]) for s in en}
        assert used and not used & held
        assert used == {i for i in range(20) if i % 3 and i not in held}


def test_bench_splits_keep_the_held_out_fold_out_of_training_and_inner_validation():
    n = 785
    for fold in range(5):
        held = set(folds(n, 5, 0)[fold].tolist())
        tr, te = split_indices(n, fold)
        assert set(te.tolist()) == held and not set(tr.tolist()) & held and len(tr) + len(te) == n
        itr, val = split_indices(n, fold, inner=True)
        assert not (set(itr.tolist()) | set(val.tolist())) & held and not set(itr.tolist()) & set(val.tolist())
    data = TuxData.__new__(TuxData)
    data.full = _fake_tux()
    tr, te = split_indices(20, 0)
    en, zh = data.parallel(tr)
    assert {int(s.split()[1]) for s in en} <= set(tr.tolist())


def test_stage_two_starts_from_the_init_model_heads(tmp_path, image_tower, minilm):
    csv = make_caption_set(tmp_path / "shapes", copies=1)
    base = ["towers.image_size=64", "train.ensemble=2", "bridge.alpha=0", "data.folds=3", f"data.source=csv:{csv}",
            f"cache_dir={tmp_path / 'cache'}", f"out={tmp_path / 'run'}", "train.epochs=2"]
    cfg = build_config(CaptionRunConfig, {}, base)
    p = caption.prepare(cfg, progress=False, towers=(image_tower, minilm))
    first = caption.build_model(cfg, p)
    caption.train(cfg, p, first, progress=False)
    first.save_pretrained(tmp_path / "init")
    cfg2 = build_config(CaptionRunConfig, {}, [*base, f"init={tmp_path / 'init'}"])
    p2 = caption.prepare(cfg2, progress=False)
    second = caption.build_model(cfg2, p2)
    for k, v in first.state_dict().items():
        if k.startswith(("image_head.", "similarity.")):
            assert torch.equal(second.state_dict()[k], v), k
    bad = build_config(CaptionRunConfig, {}, [*base, f"init={tmp_path / 'init'}", "train.ensemble=3"])
    with pytest.raises(ClipforgeError, match="does not fit"):
        caption.build_model(bad, caption.prepare(bad, progress=False))
    with pytest.raises(ClipforgeError, match="towers.image_size"):
        caption.prepare(build_config(CaptionRunConfig, {}, [*base, f"init={tmp_path / 'init'}", "towers.image_size=96"]))


def test_chinese_templates_and_class_names():
    d = from_templates(["cat", "猫"])
    assert d.sentences[0][0] == "a photo of a cat." and d.sentences[1][0] == "一张猫的照片。"
    assert len(d.sentences[1]) == len(ZH_TEMPLATES) and all("猫" in s for s in d.sentences[1])
    assert from_templates(["猫"], ["{}"]).sentences == [["猫"]]
    assert is_chinese("短靴") and not is_chinese("Ankle boot")
    assert len(CIFAR10_ZH) == 10 and len(CIFAR100_ZH) == 100 == len(set(CIFAR100_ZH)) and len(FASHION_MNIST_ZH) == 10
    assert all("{}" in t for t in template_set("zh"))
    with pytest.raises(ConfigError):
        template_set("fr")


def _write_cifar10(root, n_per=2):
    """The original python-pickle layout, written here by hand: bytes keys, N x 3072 rows (R plane, G, B)."""
    root.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in names], b"num_vis": 3072}, f)
    rng = np.random.RandomState(0)
    first = None
    for fname in ["test_batch", *[f"data_batch_{i}" for i in range(1, 6)]]:
        labels = [c for c in range(10) for _ in range(n_per)]
        img = np.zeros((len(labels), 32, 32, 3), np.uint8)
        img[..., 0] = rng.randint(0, 255, (len(labels), 1, 1))  # a red level per image
        img[:, :16, :, 1] = 200                                  # top half green
        data = img.transpose(0, 3, 1, 2).reshape(len(labels), 3072)
        with open(root / fname, "wb") as f:
            pickle.dump({b"batch_label": fname.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * len(labels)}, f)
        first = img if first is None else first
    return root, names, first


def test_cifar_pickle_loaders(tmp_path):
    root, names, img = _write_cifar10(tmp_path / "cifar-10-batches-py")
    test = load_cifar(root, "test")
    assert test.class_names == names and test.images.shape == (20, 32, 32, 3) and test.labels.tolist()[:3] == [0, 0, 1]
    assert np.array_equal(test.images, img)  # channel planes decoded in the right order
    assert len(load_cifar(root, "train")) == 100
    assert len(load_zeroshot_source(f"cifar10:{root}").per_class(1)) == 10
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    fine = [f"class{i}" for i in range(100)]
    with open(c100 / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in fine], b"coarse_label_names": [b"x"] * 20}, f)
    with open(c100 / "test", "wb") as f:
        pickle.dump({b"fine_labels": [5, 99], b"coarse_labels": [0, 1], b"data": np.zeros((2, 3072), np.uint8)}, f)
    ds = load_cifar(c100, "test")
    assert ds.name == "cifar100" and ds.labels.tolist() == [5, 99] and ds.class_names[99] == "class99"
    with pytest.raises(ClipforgeError, match="not found"):
        load_cifar(tmp_path / "nowhere")


def test_zero_shot_averages_templates_per_class_and_reports_acc1_acc5_recall(teacher):
    names, templates = ["cat", "dog", "car", "boat", "bird", "house"], ["a photo of a {}.", "a drawing of a {}."]
    rng = np.random.RandomState(0)
    img = F.normalize(torch.from_numpy(rng.randn(30, teacher.text_tower.dim).astype(np.float32)), dim=-1).numpy()
    labels = rng.randint(0, 6, 30)
    r = evaluate_zeroshot(teacher, None, labels, names, templates, image_emb=img)
    w = np.stack([teacher.encode_text([t.format(n) for t in templates]).mean(0) for n in names])
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    pred = (img @ w.T).argmax(1)
    assert r["acc1"] == pytest.approx((pred == labels).mean())
    top5 = np.argsort(-(img @ w.T), 1)[:, :5]
    assert r["acc5"] == pytest.approx((top5 == labels[:, None]).any(1).mean())
    assert r["mean_per_class_recall"] == pytest.approx(np.mean([(pred[labels == c] == c).mean() for c in np.unique(labels)]))


def test_cli_zeroshot_on_cifar_files_in_english_and_chinese(tmp_path, teacher, student_model):
    root, _, _ = _write_cifar10(tmp_path / "c10", n_per=1)
    student_model.save_pretrained(tmp_path / "m")
    out = tmp_path / "zs.json"
    r = CliRunner().invoke(app, ["zeroshot", str(tmp_path / "m"), "--data", f"cifar10:{root}", "--lang", "both",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert set(res["metrics"]) == {"en", "zh"} and res["metrics"]["zh"]["class_names"] == CIFAR10_ZH
    assert res["metrics"]["zh"]["templates"][0] == "一张{}的照片。"
    for lg in ("en", "zh"):
        assert {"acc1", "acc5", "mean_per_class_recall"} <= set(res["metrics"][lg])
    r = CliRunner().invoke(app, ["zeroshot", str(tmp_path / "m"), "--data", "imagenet:x"])
    assert r.exit_code == 2 and "unknown zero-shot dataset" in r.output


def test_cli_distill_then_stage_two_train(tmp_path, teacher, monkeypatch):
    import clipforge.pipelines.distill as d
    en, zh = map(list, zip(*PAIRS))
    small = CaptionDataset("tux-paint", [f"{i}.png" for i in range(len(en))], [[c] for c in en], {"zh": [[z] for z in zh]})
    monkeypatch.setattr(d, "load_caption_source", lambda spec: small)  # the real Tux captions: test_parallel_text_...
    teacher.save_pretrained(tmp_path / "teacher")
    r = CliRunner().invoke(app, ["distill", "-c", "distill", "-s", f"teacher={tmp_path / 'teacher'}",
                                 "-s", "data.sources=[tux-paint]", "-s", "student.base=pkg:use-m3", "-s", "student.hidden=64",
                                 "-s", "train.epochs=2", "-s", f"out={tmp_path / 'distill'}", "-s", f"cache_dir={tmp_path / 'cache'}",
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "distill" / "results.json").read_text())
    assert res["held_out_fold"] == 0 and res["n_pairs"] == len(en) - len(folds(len(en), 5, 0)[0])
    csv = make_caption_set(tmp_path / "shapes", copies=1)
    r = CliRunner().invoke(app, ["train", "-c", "bilingual-train", "-s", f"init={tmp_path / 'distill' / 'model'}",
                                 "-s", f"data.source=csv:{csv}", "-s", "data.language=en", "-s", "data.folds=3",
                                 "-s", "towers.image_size=64", "-s", "train.epochs=2", "-s", "train.ensemble=1",
                                 "-s", "head.hidden=32", "-s", f"out={tmp_path / 'stage2'}", "-s", f"cache_dir={tmp_path / 'cache'}",
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "stage2" / "model" / "config.json").read_text())
    assert saved["text_tower"] == "distill:pkg:use-m3"


def test_bench_tux_retrieval_zh_writes_both_languages_with_the_default_first(tmp_path):
    """The benchmark end to end on a tiny stamp folder in the Tux Paint layout (<name>.png + <name>.txt with zh_CN)."""
    from captionutil import make_stamp_folder
    from benchmarks.bilingual import run_tux_retrieval_zh
    stamps = make_stamp_folder(tmp_path)
    path = run_tux_retrieval_zh(tmp_path / "out", ["clipforge", "minilm-english", "seed-pair-siamese", "asif"],
                                [f"data.source=tux-paint:{stamps}", "towers.image_size=64", "train.epochs=3",
                                 "train.ensemble=1", "bridge.alpha=0", f"cache_dir={tmp_path / 'cache'}"], fold_ids=[0])
    res = json.loads(path.read_text())
    assert [r["method"] for r in res["results"]] == ["clipforge", "minilm-english", "seed-pair-siamese", "asif"]
    for row in res["results"]:                     # trained methods and a closed-form baseline alike
        m = row["metrics"]
        for lang in ("en", "zh"):
            assert {f"{d}_R@{k}_{lang}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)} | {f"MR_{lang}"} <= set(m)
            assert 0.0 <= m[f"MR_{lang}"] <= 1.0
    fold = res["results"][0]["per_fold"][0]
    assert fold["n_texts_en"] == fold["n_texts_zh"] == len(folds(18, 5, 0)[0])
