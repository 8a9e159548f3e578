"""Bilingual benchmarks: Tux Paint retrieval with zh_CN captions beside English, Fashion-MNIST zero-shot with Chinese
class names beside English. The clipforge default is the first row of ``results`` (docs/benchmarks.md).

``tux-retrieval-zh``: the SAME 5 folds as ``bench tux-retrieval`` (over the 785 captioned stamps, seed 0); each
method trains once per fold on the four training folds and is evaluated on the held-out fold twice: with the
English captions (MR_en) and with the zh_CN captions of the held-out stamps that have one (MR_zh).
Whatever a method learns from (captions in either language, parallel text for distillation) comes from the
training folds only. ``inner=True`` replaces the held-out fold by a validation quarter of fold k's TRAINING
folds (the held-out fold is not even loaded into training or scoring): that is how the recipes below were
chosen (docs/bilingual.md).

Methods:
* ``clipforge``: frozen multilingual-e5-small (``pkg:e5-small-query``) as the text tower, the Tux default head
  recipe, trained on every image's English AND Chinese captions (``data.language=en+zh``).
* ``use-m3-mixed``: the same with multilingual USE v3.
* ``altclip-distill``: AltCLIP's two stages. The English default (MiniLM) is trained on the training folds;
  a student (e5-small + MLP) learns to put English and Chinese onto the teacher's MiniLM embeddings from the
  training folds' caption translations and the emoji en/zh names (stage 1); then the image head and the
  temperature are fine-tuned contrastively on mixed en+zh captions (stage 2). Stage-1 numbers are kept per fold.
* ``minilm-english``: the English default with Chinese typed at it (what you get without this work).
* the issue-8 baselines on the default's towers (``pkg:e5-small-query``) and mixed en+zh training captions:
  ``seed-contrastive`` and ``seed-pair-siamese`` (the seeds' objectives, bench/tux_retrieval.py), and the
  closed-form ``conse``, ``procrustes``, ``least-squares`` and ``asif`` (baselines.py) on the cached features.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipforge.pipelines import caption_data, captions as caption
from clipforge.embed.cache import EmbeddingCache, embed_texts
from clipforge.config import CaptionRunConfig, build_config
from clipforge.data.captions import folds, load_caption_source
from clipforge.errors import ClipforgeError
from clipforge.evaluate.baselines import BASELINES, FeatureMethod
from clipforge.embed.concepts import conse_inputs
from benchmarks.env import environment
from benchmarks.tux_retrieval import CAPTION_METHODS

RECALLS = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)]
FOLDS = [0, 1, 2, 3, 4]

BILINGUAL_METHODS: dict[str, dict] = {
    "clipforge": {"language": "en+zh", "overrides": ["towers.text=pkg:e5-small-query"]},
    "use-m3-mixed": {"language": "en+zh", "overrides": ["towers.text=pkg:use-m3"]},
    "altclip-distill": {"language": "en+zh", "distill": {"base": "pkg:e5-small-query", "kind": "mlp", "loss": "cosine"},
                        "overrides": ["train.epochs=100"]},
    "minilm-english": {"language": "en", "overrides": []},
}
E5 = ["towers.text=pkg:e5-small-query"]
for _name in ("seed-contrastive", "seed-pair-siamese"):
    BILINGUAL_METHODS[_name] = {"language": "en+zh", "overrides": [*E5, *CAPTION_METHODS[_name]]}
for _name in BASELINES:
    BILINGUAL_METHODS[_name] = {"language": "en+zh", "overrides": list(E5), "baseline": _name}


def method_spec(name: str) -> dict:
    if name not in BILINGUAL_METHODS:
        raise ClipforgeError(f"unknown bilingual method '{name}'; choose from {sorted(BILINGUAL_METHODS)}")
    return BILINGUAL_METHODS[name]


def split_indices(n: int, fold: int, k: int = 5, seed: int = 0, inner: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) image indices. Outer: the protocol's fold ``fold`` held out. Inner: fold ``fold`` is dropped
    entirely and a quarter of the remaining training folds (fixed seed) is the validation set."""
    held = folds(n, k, seed)[fold]
    train = np.setdiff1d(np.arange(n), held)
    if not inner:
        return train, held
    val = train[folds(len(train), k - 1, seed + 1)[0]]
    return np.setdiff1d(train, val), val


class TuxData:
    """The captioned stamps with cached image features, loaded once for every method and fold."""

    def __init__(self, image_tower, cache: EmbeddingCache, source: str = "tux-paint", size: int = 224):
        self.image_tower, self.cache = image_tower, cache
        self.full, self.images = caption_data.images_of(load_caption_source(source), image_tower, True, cache, size, False)

    def side(self, idx: np.ndarray, lang: str, text_tower) -> caption.Side:
        s = caption_data.side_of(self.full, self.images, idx, lang)
        s.text_feats = embed_texts(text_tower, s.texts, self.cache)
        return s

    def parallel(self, idx: np.ndarray, lang: str = "zh") -> tuple[list[str], list[str]]:
        """(en, zh) caption pairs of the images ``idx`` only."""
        en, other = [], []
        for i in idx:
            caps, trs = self.full.captions[i], self.full.translations.get(lang, [[]] * len(self.full))[i]
            for t in trs:
                if caps:
                    en.append(caps[0])
                    other.append(t)
        return en, other


def _train(cfg: CaptionRunConfig, data: TuxData, train_idx: np.ndarray, text_tower, init_state=None):
    train = data.side(train_idx, cfg.data.language, text_tower)
    p = caption.Prepared(train, None, data.image_tower, text_tower, True, True, init_state)
    model = caption.build_model(cfg, p)
    trainer = caption.train(cfg, p, model, progress=False)
    return model, trainer


def _evaluate(model, data: TuxData, test_idx: np.ndarray, text_tower=None) -> dict:
    """Both languages' recalls of a trained model, or of a closed-form baseline (then ``text_tower`` is needed)."""
    from clipforge.evaluate.retrieval import retrieval_metrics
    out = {}
    for lang in ("en", "zh"):
        side = data.side(test_idx, lang, text_tower or model.text_tower)
        if isinstance(model, FeatureMethod):
            m = retrieval_metrics(model.image_embed(side.images), model.text_embed(side.text_feats), side.owners)
            m["n_texts"] = len(side.texts)
        else:
            m, _ = caption.evaluate(model, side, True, 0)
        for k in [*RECALLS, "MR"]:
            out[f"{k}_{lang}"] = float(m[k])
        out[f"n_texts_{lang}"] = int(m["n_texts"])
    out["ratio_zh_en"] = out["MR_zh"] / out["MR_en"] if out["MR_en"] else float("nan")
    return out


def _fit_baseline(name: str, cfg: CaptionRunConfig, data: TuxData, train_idx: np.ndarray, text_tower) -> FeatureMethod:
    """A closed-form baseline fitted on the training folds' (image feature, caption feature) pairs."""
    from clipforge.evaluate import baselines as baselines
    train = data.side(train_idx, cfg.data.language, text_tower)
    kw = {}
    if name == "conse":
        kw = conse_inputs(data.image_tower, text_tower, cfg.bridge.template, data.cache)
    return baselines.make(name, **kw).fit(train.images[train.owners], train.text_feats)


def fit_method(method: str, data: TuxData, train_idx: np.ndarray, overrides: list[str], towers: dict,
               scratch: str, seed_extra: dict | None = None) -> tuple[object, dict]:
    """Train ``method`` on the images ``train_idx``; returns the model and extra per-fold information."""
    from clipforge.towers import build_tower
    spec = method_spec(method)
    extra: dict = {}
    cfg = build_config(CaptionRunConfig, {}, [*spec["overrides"], *overrides, f"data.language={spec['language']}",
                                              f"out={scratch}"])
    if "distill" not in spec:
        if cfg.towers.text not in towers:
            towers[cfg.towers.text] = build_tower(cfg.towers.text, "text")
        if "baseline" in spec:
            return _fit_baseline(spec["baseline"], cfg, data, train_idx, towers[cfg.towers.text]), \
                {"_text_tower": towers[cfg.towers.text]}
        model, _ = _train(cfg, data, train_idx, towers[cfg.towers.text])
        return model, extra
    from clipforge.pipelines.distill import DistillTrainConfig, StudentConfig, distill, parallel_text
    d = spec["distill"]
    teacher_cfg = build_config(CaptionRunConfig, {}, [*overrides, "data.language=en", f"out={scratch}"])
    if teacher_cfg.towers.text not in towers:
        towers[teacher_cfg.towers.text] = build_tower(teacher_cfg.towers.text, "text")
    teacher, _ = _train(teacher_cfg, data, train_idx, towers[teacher_cfg.towers.text])
    en, zh = data.parallel(train_idx)
    emoji_en, emoji_zh = parallel_text(["emoji"], "zh")
    t0 = time.time()
    student = distill(teacher, en + emoji_en, zh + emoji_zh, StudentConfig(base=d["base"], kind=d["kind"]),
                      DistillTrainConfig(loss=d["loss"]), data.cache)
    extra["distill_seconds"] = round(time.time() - t0, 1)
    extra["n_parallel"] = len(en) + len(emoji_en)
    extra["stage1"] = None  # filled by the caller (needs the test side)
    init_state = {k: v for k, v in student.state_dict().items() if not k.startswith(("image_tower.", "text_tower."))}
    model, _ = _train(cfg, data, train_idx, student.text_tower, init_state)
    extra["_stage1_model"] = student
    return model, extra


def run_tux_retrieval_zh(out: str | Path, methods: list[str], overrides: list[str] = (), fold_ids=FOLDS,
                         inner: bool = False, progress: bool = False) -> Path:
    from clipforge.towers import build_tower
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    base_cfg = build_config(CaptionRunConfig, {}, list(overrides))
    cache = EmbeddingCache(base_cfg.cache_dir)
    image_tower = build_tower(base_cfg.towers.image, "image", base_cfg.towers.image_size, base_cfg.towers.invert)
    data = TuxData(image_tower, cache, base_cfg.data.source, base_cfg.towers.image_size)
    n, k, seed = len(data.full), base_cfg.data.folds, base_cfg.data.split_seed
    towers: dict = {}
    rows = []
    suite = "tux-retrieval-zh-inner" if inner else "tux-retrieval-zh"
    path = out / f"{suite}.json"
    with tempfile.TemporaryDirectory(prefix="clipforge-bench-") as scratch:
        for method in methods:
            per_fold = []
            for fold in fold_ids:
                ts = time.time()
                train_idx, test_idx = split_indices(n, fold, k, seed, inner)
                model, extra = fit_method(method, data, train_idx, list(overrides), towers, str(Path(scratch) / method))
                m = _evaluate(model, data, test_idx, extra.pop("_text_tower", None))
                stage1 = extra.pop("_stage1_model", None)
                if stage1 is not None:
                    s1 = _evaluate(stage1, data, test_idx)
                    extra["stage1"] = {"MR_en": s1["MR_en"], "MR_zh": s1["MR_zh"]}
                m.update(extra)
                m["fold"] = fold
                m["n_train_images"] = int(len(train_idx))
                m["train_seconds"] = round(time.time() - ts, 1)
                per_fold.append(m)
                print(f"{suite} {method} fold {fold}: MR_en {m['MR_en']:.3f} MR_zh {m['MR_zh']:.3f} "
                      f"ratio {m['ratio_zh_en']:.3f} ({m['train_seconds']:.0f} s)", flush=True)
            keys = [f"{r}_{lang}" for lang in ("en", "zh") for r in [*RECALLS, "MR"]] + ["ratio_zh_en"]
            mean = {kk: float(np.mean([f[kk] for f in per_fold])) for kk in keys}
            mean["ratio_zh_en_of_means"] = mean["MR_zh"] / mean["MR_en"]
            rows.append({"method": method, "train_language": method_spec(method)["language"],
                         "overrides": method_spec(method)["overrides"], "distill": method_spec(method).get("distill"),
                         "metrics": mean, "std": {kk: float(np.std([f[kk] for f in per_fold])) for kk in keys},
                         "per_fold": per_fold})
            path = _write_tux_zh(out, suite, base_cfg, fold_ids, k, seed, inner, rows, t0)  # every finished method is kept
    return path


def _write_tux_zh(out: Path, suite: str, base_cfg, fold_ids, k: int, seed: int, inner: bool, rows: list, t0: float) -> Path:
    result = {"suite": suite, "dataset": base_cfg.data.source, "task": "zeroshot_retrieval", "languages": ["en", "zh"],
              "model": f"{base_cfg.towers.image} + <text tower per method>",
              "protocol": {"folds": list(fold_ids), "k": k, "split_seed": seed, "inner_validation": inner,
                           "split": "numpy RandomState(split_seed).permutation(n)[i::k] of the 785 captioned non-mirror "
                                    "PNGs (the English protocol's folds); the zh side keeps the held-out stamps that "
                                    "have a zh_CN caption",
                           "inner": "validation = folds(len(train), k-1, split_seed+1)[0] of fold k's training folds"
                                    if inner else None,
                           "image_size": base_cfg.towers.image_size,
                           "metric_names": "<metric>_en: English captions; <metric>_zh: zh_CN captions of the same "
                                           "held-out images; image_to_text_R@k: an image's caption in the top k texts; "
                                           "text_to_image_R@k: a caption's image in the top k images; MR = mean of the six"},
              "results": rows, "wall_seconds": round(time.time() - t0, 1), "env": environment()}
    path = out / f"{suite}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return path


# -- Fashion-MNIST zero-shot with Chinese class names ---------------------------------------------------------

FASHION_METHODS: dict[str, list[str]] = {
    "clipforge": ["towers.text=pkg:e5-small-query"],
    "use-m3": ["towers.text=pkg:use-m3"],
    "minilm-english": [],
}
FASHION_SPLITS = [0, 1, 2, 3, 4]


def _fashion_lang_metrics(model, p, image_emb: np.ndarray, names: list[str], templates: list[str]) -> dict:
    from clipforge.data.descriptions import from_templates
    from clipforge.evaluate.zeroshot import ZeroShotClassifier, topk_metrics
    s = ZeroShotClassifier(model, from_templates(names, templates)).scores(image_emb)
    mu = np.isin(p.test_y, p.unseen)
    unseen = topk_metrics(s[mu], p.test_y[mu], p.unseen)
    every = topk_metrics(s, p.test_y, list(range(len(names))))
    return {"unseen_top1": unseen["top1"], "unseen_mean_per_class_recall": unseen["mean_per_class_recall"],
            "all10_acc1": every["top1"], "all10_acc5": every["top5"],
            "all10_mean_per_class_recall": every["mean_per_class_recall"]}


def run_fashion_zsl_zh(out: str | Path, methods: list[str], overrides: list[str] = (), splits=FASHION_SPLITS,
                       progress: bool = False) -> Path:
    """The Fashion-MNIST protocol of docs/benchmarks.md (5 splits, seen-class training on the packaged English descriptions);
    at test time the unseen classes are named in English (en templates) and in Chinese (zh templates)."""
    from clipforge.pipelines import classes as align
    from clipforge.config import load_config
    from clipforge.data.fashion_mnist import CLASS_NAMES
    from clipforge.data.templates_zh import FASHION_MNIST_ZH, template_set
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = []
    image_tower = None
    for method in methods:
        if method not in FASHION_METHODS:
            raise ClipforgeError(f"unknown fashion method '{method}'; choose from {sorted(FASHION_METHODS)}")
        per_split, towers = [], None
        for seed in splits:
            cfg = load_config(None, [*FASHION_METHODS[method], *overrides, f"data.split_seed={seed}"])
            if towers is None and image_tower is not None:
                from clipforge.towers import build_tower
                towers = (image_tower, build_tower(cfg.towers.text, "text"))
            p = align.prepare(cfg, progress=progress, towers=towers)
            towers = (p.image_tower, p.text_tower)
            image_tower = p.image_tower
            ts = time.time()
            model = align.train_model(cfg, p, progress=progress)
            with torch.inference_mode():
                emb = model.embed_image_features(torch.from_numpy(p.test_x)).numpy()
            m = {"unseen": [CLASS_NAMES[c] for c in p.unseen], "unseen_zh": [FASHION_MNIST_ZH[c] for c in p.unseen]}
            for lang, names in (("en", list(CLASS_NAMES)), ("zh", list(FASHION_MNIST_ZH))):
                for kk, v in _fashion_lang_metrics(model, p, emb, names, template_set(lang)).items():
                    m[f"{kk}_{lang}"] = v
            m["unseen_top1_descriptions_en"] = align.evaluate_model(model, p, 0.0, probe=False)["unseen_top1"]
            m["train_seconds"] = round(time.time() - ts, 2)
            per_split.append(m)
            print(f"fashion-zsl-zh {method} split {seed}: unseen top-1 en {m['unseen_top1_en']:.3f} "
                  f"zh {m['unseen_top1_zh']:.3f}", flush=True)
        keys = [kk for kk in per_split[0] if isinstance(per_split[0][kk], float) and kk != "train_seconds"]
        rows.append({"method": method, "overrides": FASHION_METHODS[method],
                     "metrics": {kk: float(np.mean([s[kk] for s in per_split])) for kk in keys},
                     "std": {kk: float(np.std([s[kk] for s in per_split])) for kk in keys}, "per_split": per_split})
    cfg = load_config(None, list(overrides))
    result = {"suite": "fashion-zsl-zh", "dataset": "fashion-mnist", "task": "zeroshot_classification",
              "languages": ["en", "zh"], "model": f"{cfg.towers.image} + <text tower per method>",
              "protocol": {"splits": list(splits), "unseen": "sorted(random.Random(seed).sample(range(10), 3))",
                           "train_per_class": cfg.data.train_per_class, "test_per_class": cfg.data.test_per_class,
                           "image_size": image_tower.input_size if image_tower else cfg.towers.image_size,
                           "training": "seen classes of the train set only, packaged English descriptions",
                           "test": "class names x the template set of the language (DEFAULT_TEMPLATES / ZH_TEMPLATES), "
                                   "averaged and re-normalised per class; unseen_top1: N-way among the 3 unseen; "
                                   "all10_*: 10-way over every test image, uncalibrated",
                           "class_names_zh": FASHION_MNIST_ZH},
              "results": rows, "wall_seconds": round(time.time() - t0, 1), "env": environment()}
    path = out / "fashion-zsl-zh.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return path


__all__ = ["run_tux_retrieval_zh", "run_fashion_zsl_zh", "BILINGUAL_METHODS", "FASHION_METHODS", "split_indices"]
