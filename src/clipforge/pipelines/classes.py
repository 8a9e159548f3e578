"""The main job: align an image tower and a text tower on the seen classes, zero-shot the unseen ones.

Steps, each a function so the benchmark can reuse them:
  1. ``prepare``: datasets, split, towers, cached features of images and descriptions;
  2. ``train_model``: heads trained on seen-class images against seen-class descriptions only;
  3. ``evaluate_model``: unseen N-way, seen N-way, GZSL with calibrated stacking, linear probe;
  4. ``run``: all of it plus saving the model, results JSON and the skipped-items report.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipforge.embed.cache import EmbeddingCache, embed_dataset, embed_texts
from clipforge.config import RunConfig
from clipforge.data import ClassDescriptions, SkipReport, load_descriptions, seen_unseen
from clipforge.data.sources import load_class_source
from clipforge.errors import ClipforgeError
from clipforge.evaluate.probe import linear_probe
from clipforge.evaluate.zeroshot import GAMMA_GRID, ZeroShotClassifier, gzsl_h_curve, gzsl_metrics, topk_metrics
from clipforge.model.dual_encoder import DualEncoder
from clipforge.losses.classes import ClassBatchData, batches_fn, make_step
from clipforge.towers import build_tower
from clipforge.train.trainer import ParamGroup, Trainer, seed_everything


@dataclass
class Prepared:
    class_names: list[str]
    seen: list[int]
    unseen: list[int]
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    descriptions: ClassDescriptions
    vocab: list[str]
    vocab_feats: np.ndarray
    image_tower: object
    text_tower: object
    skipped: SkipReport
    tower_opts: dict


def prepare(cfg: RunConfig, progress: bool = True, towers: tuple | None = None) -> Prepared:
    train_ds, test_ds, fixed_unseen = load_class_source(cfg.data.source, cfg.data.seed)
    names = train_ds.class_names
    if fixed_unseen and not cfg.data.unseen:
        seen, unseen = [c for c in range(len(names)) if c not in fixed_unseen], sorted(fixed_unseen)
    else:
        seen, unseen = seen_unseen(names, cfg.data.n_unseen, cfg.data.split_seed, cfg.data.unseen)
    train_ds = train_ds.per_class(cfg.data.train_per_class, cfg.data.seed)
    test_ds = test_ds.per_class(cfg.data.test_per_class, cfg.data.seed + 1)
    invert = train_ds.grey_light_on_dark if cfg.towers.invert is None else cfg.towers.invert
    tower_opts = {"image_size": cfg.towers.image_size, "invert": invert}
    if towers is None:
        image_tower = build_tower(cfg.towers.image, "image", **tower_opts)
        text_tower = build_tower(cfg.towers.text, "text")
    else:
        image_tower, text_tower = towers
    image_tower.lock()
    text_tower.lock()
    # The size the tower really uses (its native one when the config says null), so a saved model records it.
    tower_opts["image_size"] = image_tower.preprocess_key().get("size", cfg.towers.image_size)
    cache = EmbeddingCache(cfg.cache_dir)
    tr_x, tr_y = embed_dataset(image_tower, train_ds, cache, progress=progress)
    te_x, te_y = embed_dataset(image_tower, test_ds, cache, progress=progress)
    _require_images(cfg.data.source, "training", int(np.isin(tr_y, seen).sum()), train_ds.skipped)
    _require_images(cfg.data.source, "test", len(te_y), test_ds.skipped)
    desc = load_descriptions(names, cfg.data.descriptions, dataset=cfg.data.source)
    vocab = desc.vocabulary()
    vocab_feats = embed_texts(text_tower, vocab, cache)
    # Folder sources split one dataset, so train and test may share one report: count each item once.
    skipped = train_ds.skipped if test_ds.skipped is train_ds.skipped else \
        SkipReport(train_ds.skipped.items + test_ds.skipped.items)
    return Prepared(names, seen, unseen, tr_x, tr_y, te_x, te_y, desc, vocab, vocab_feats,
                    image_tower, text_tower, skipped, tower_opts)


def _require_images(source: str, part: str, n: int, skipped: SkipReport) -> None:
    """No usable image is an error: a model trained on nothing (or scored on nothing) has NaN metrics and looks
    like a result."""
    if n:
        return
    first = f"; e.g. {skipped.items[0][0]}: {skipped.items[0][1]}" if skipped.items else ""
    raise ClipforgeError(f"no usable {part} images in '{source}' ({len(skipped)} items skipped{first})")


def train_model(cfg: RunConfig, p: Prepared, seen: list[int] | None = None, out_dir: str | Path | None = None,
                progress: bool = True, ensemble: int | None = None, resume: bool = False) -> DualEncoder:
    """Heads trained on the images of ``seen`` classes against the descriptions of ``seen`` classes."""
    seen = p.seen if seen is None else seen
    seed_everything(cfg.train.seed)
    model = DualEncoder(p.image_tower, p.text_tower, cfg.head, ensemble or cfg.train.ensemble, cfg.train.seed,
                        tower_opts=p.tower_opts)
    mask = np.isin(p.train_y, seen)
    x = torch.from_numpy(p.train_x[mask])
    model.image_head.fit_normalizer(x)
    if model.text_head is not None:
        model.text_head.fit_normalizer(torch.from_numpy(p.vocab_feats))
    seen_vocab = p.descriptions.vocabulary(seen)          # never a sentence of an unseen class
    idx = [p.vocab.index(s) for s in seen_vocab]
    data = ClassBatchData(x, torch.from_numpy(p.train_y[mask]), torch.from_numpy(p.vocab_feats[idx]),
                          torch.from_numpy(p.descriptions.membership(seen_vocab)), seen)
    groups = [ParamGroup("image_head", model.image_head, cfg.train.lr, cfg.train.weight_decay),
              ParamGroup("similarity", model.similarity, cfg.train.lr_similarity or cfg.train.lr, 0.0)]
    if model.text_head is not None:
        groups.append(ParamGroup("text_head", model.text_head, cfg.train.lr, cfg.train.weight_decay))
    n = len(x)
    steps = max(1, -(-n // cfg.train.batch_size)) if cfg.train.batch_size else 1
    trainer = Trainer(model, groups, cfg.train.epochs, steps, out_dir, cfg.train.warmup_steps, cfg.train.grad_clip,
                      cfg.train.log_every, progress, tensorboard=out_dir is not None,
                      checkpoint_every=cfg.train.checkpoint_every)
    trainer.fit(batches_fn(n, cfg.train.batch_size, cfg.train.seed), make_step(model, data, cfg.loss), resume=resume)
    model.train_history = trainer.state.history
    return model.eval()


def class_scores(model: DualEncoder, p: Prepared, x: np.ndarray) -> np.ndarray:
    zs = ZeroShotClassifier(model, p.descriptions, p.vocab_feats, p.vocab)
    with torch.inference_mode():
        return zs.scores(model.embed_image_features(torch.from_numpy(x)))


def calibrate_gamma(cfg: RunConfig, p: Prepared, scorer=None, progress: bool = False) -> float:
    """GZSL calibration chosen on the SEEN classes only. In each of several pseudo splits some seen classes play
    unseen and a small model is trained on the rest; the H-versus-gamma curves of those models, measured on the
    seen-class training images, are averaged and their best gamma kept. One pseudo split is a noisy guide (the
    classes that play unseen decide it); the average over several is not.

    ``scorer(classes) -> (features -> (N, n_classes) scores)`` fits another method on ``classes``; by default it
    is ``train_model`` with one head."""
    if scorer is None:
        def scorer(classes):
            small = train_model(cfg, p, seen=classes, progress=progress, ensemble=1)
            return lambda x: class_scores(small, p, x)
    m = np.isin(p.train_y, p.seen)
    curves = [h_curve_on_seen(scorer(val_seen)(p.train_x[m]), p, val_seen, val_unseen)
              for val_seen, val_unseen in pseudo_splits(cfg, p)]
    if not curves:
        return 0.0
    return float(GAMMA_GRID[int(np.argmax(np.mean(curves, 0)))])


def pseudo_splits(cfg: RunConfig, p: Prepared) -> list[tuple[list[int], list[int]]]:
    """``train.gzsl_pseudo_splits`` different (pseudo-seen, pseudo-unseen) splits of the SEEN classes, as many
    pseudo-unseen, proportionally, as the real split has unseen: for choices that must never look at the real
    unseen classes. Fixed by the split seed."""
    n_val = max(1, round(len(p.seen) * len(p.unseen) / len(p.class_names)))
    if n_val >= len(p.seen):
        return []                           # too few seen classes to hold any out: no calibration (gamma 0)
    rng, want = random.Random(cfg.data.split_seed + 1000), cfg.train.gzsl_pseudo_splits
    if math.comb(len(p.seen), n_val) <= 10_000:          # few enough to list: distinct draws, in a fixed order
        combos = list(itertools.combinations(p.seen, n_val))
        rng.shuffle(combos)
        held = combos[:want]
    else:                                                 # e.g. AwA2's 40 seen classes: sample, never list
        seen_draws, held = set(), []
        while len(held) < want:
            vu = tuple(sorted(rng.sample(p.seen, n_val)))
            if vu not in seen_draws:
                seen_draws.add(vu)
                held.append(vu)
    return [([c for c in p.seen if c not in vu], sorted(vu)) for vu in held]


def h_curve_on_seen(scores_all: np.ndarray, p: Prepared, val_seen: list[int], val_unseen: list[int]) -> np.ndarray:
    """H at every gamma of GAMMA_GRID on the seen-class training images, scored by a model that saw ``val_seen`` only.
    Images of the pseudo-unseen classes are unseen by that model; the others were trained on, as the real seen
    classes were for the real model."""
    m = np.isin(p.train_y, p.seen)
    scores = scores_all[:, p.seen]
    local = {c: i for i, c in enumerate(p.seen)}
    y = np.array([local[int(v)] for v in p.train_y[m]])
    return gzsl_h_curve(scores, y, [local[c] for c in val_seen], [local[c] for c in val_unseen])


def evaluate_model(model: DualEncoder, p: Prepared, gamma: float = 0.0, probe: bool = True) -> dict:
    return evaluate_scores(class_scores(model, p, p.test_x), p, gamma, probe)


def evaluate_scores(s: np.ndarray, p: Prepared, gamma: float = 0.0, probe: bool = True) -> dict:
    """Every metric of the protocol from (n_test, n_classes) scores, whatever method produced them."""
    mu, ms = np.isin(p.test_y, p.unseen), np.isin(p.test_y, p.seen)
    unseen = topk_metrics(s[mu], p.test_y[mu], p.unseen)
    seen = topk_metrics(s[ms], p.test_y[ms], p.seen)
    metrics = {"unseen_top1": unseen["top1"], "unseen_mean_per_class_recall": unseen["mean_per_class_recall"],
               "seen_top1": seen["top1"], **gzsl_metrics(s, p.test_y, p.seen, p.unseen, gamma),
               "gzsl_h_uncalibrated": gzsl_metrics(s, p.test_y, p.seen, p.unseen, 0.0)["gzsl_h"]}
    if "top5" in unseen:
        metrics["unseen_top5"] = unseen["top5"]
    if probe:
        metrics["linear_probe_unseen_top1"] = linear_probe(p.train_x, p.train_y, p.test_x, p.test_y, p.unseen)
    metrics["unseen_confusion"] = unseen["confusion"]
    return metrics


def format_table(p: Prepared, metrics: dict) -> str:
    rows = [("unseen classes", ", ".join(p.class_names[c] for c in p.unseen)),
            ("unseen top-1 (N-way among unseen)", f"{metrics['unseen_top1']:.3f}"),
            ("unseen mean per-class recall", f"{metrics['unseen_mean_per_class_recall']:.3f}"),
            ("seen top-1 (N-way among seen)", f"{metrics['seen_top1']:.3f}"),
            ("GZSL seen / unseen / H", f"{metrics['gzsl_seen']:.3f} / {metrics['gzsl_unseen']:.3f} / {metrics['gzsl_h']:.3f}")]
    if "linear_probe_unseen_top1" in metrics:
        rows.append(("linear-probe ceiling (unseen)", f"{metrics['linear_probe_unseen_top1']:.3f}"))
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"  {a:<{w}}  {b}" for a, b in rows)


def run(cfg: RunConfig, progress: bool = True, resume: bool = False) -> dict:
    """The whole main job; writes ``out/model``, ``out/results.json`` and ``out/skipped.json``."""
    t0 = time.time()
    out = Path(cfg.out)
    p = prepare(cfg, progress)
    t_embed = time.time() - t0
    model = train_model(cfg, p, out_dir=out / "checkpoints", progress=progress, resume=resume)
    gamma = calibrate_gamma(cfg, p)
    metrics = evaluate_model(model, p, gamma)
    model.save_pretrained(out / "model")
    p.skipped.write(out / "skipped.json")
    result = {"dataset": cfg.data.source, "model": f"{cfg.towers.image} + {cfg.towers.text}", "task": "zeroshot_classification",
              "seen": [p.class_names[c] for c in p.seen], "unseen": [p.class_names[c] for c in p.unseen],
              "metrics": metrics, "n_train": int(np.isin(p.train_y, p.seen).sum()), "n_test": int(len(p.test_y)),
              "n_skipped": len(p.skipped), "seconds": {"embed": round(t_embed, 1), "total": round(time.time() - t0, 1)},
              "config": cfg.model_dump()}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    result["table"] = format_table(p, metrics)
    return result
