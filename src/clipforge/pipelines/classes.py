"""The main job: align an image tower and a text tower on the seen classes, zero-shot the unseen ones.

Steps, each a function so the benchmark can reuse them:
  1. ``prepare`` (pipelines/class_data.py): datasets, split, towers, cached features of images and descriptions;
  2. ``train_model``: heads trained on seen-class images against seen-class descriptions only (with
     ``towers.unlock_image_last_n``, the image tower's last blocks too: pipelines/finetune.py);
  3. ``evaluate_model``: unseen N-way, seen N-way, GZSL with calibrated stacking, linear probe;
  4. ``run``: all of it plus saving the model, results JSON and the skipped-items report.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from clipforge.config import RunConfig
from clipforge.evaluate.probe import linear_probe
from clipforge.evaluate.zeroshot import GAMMA_GRID, ZeroShotClassifier, gzsl_h_curve, gzsl_metrics, topk_metrics
from clipforge.embed.concepts import attach_concept_bridge
from clipforge.model.dual_encoder import DualEncoder
from clipforge.losses.classes import ClassBatchData, class_objective
from clipforge.pipelines.class_data import Prepared, prepare
from clipforge.pipelines.finetune import trunk_inputs, tunable_tower, tuned_features
from clipforge.train.trainer import ParamGroup, Trainer, seed_everything


def train_model(cfg: RunConfig, p: Prepared, seen: list[int] | None = None, out_dir: str | Path | None = None,
                progress: bool = True, ensemble: int | None = None, resume: bool = False) -> DualEncoder:
    """Heads trained on the images of ``seen`` classes against the descriptions of ``seen`` classes."""
    seen = p.seen if seen is None else seen
    seed_everything(cfg.train.seed)
    last_n = cfg.towers.unlock_image_last_n
    image_tower = tunable_tower(p.image_tower, last_n) if last_n else p.image_tower
    model = DualEncoder(image_tower, p.text_tower, cfg.head, ensemble or cfg.train.ensemble, cfg.train.seed,
                        tower_opts=p.tower_opts)
    model.tuned_blocks = last_n
    model.bridge_off = attach_bridge(cfg, p, model)
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
    inputs = None
    if last_n:
        groups.append(ParamGroup("image_tower", model.image_tower, cfg.train.lr_image_tower, cfg.train.weight_decay))
        inputs = trunk_inputs(p.image_tower, p.train_ds, last_n, len(p.train_x))[torch.from_numpy(mask)]
    objective = class_objective(model, data, cfg.loss, cfg.train.batch_size, cfg.train.seed,
                                image_trunk_blocks=last_n, image_inputs=inputs)
    trainer = Trainer(model, groups, cfg.train.epochs, objective.steps_per_epoch, out_dir, cfg.train.warmup_steps,
                      cfg.train.grad_clip, cfg.train.log_every, progress, tensorboard=out_dir is not None,
                      checkpoint_every=cfg.train.checkpoint_every)
    trainer.fit(objective.batches, objective, resume=resume)
    model.train_history = trainer.state.history
    return model.eval()


def attach_bridge(cfg: RunConfig, p: Prepared, model: DualEncoder) -> str | None:
    """Blend the ImageNet concept bank into ``model``'s scores with weight ``bridge.alpha`` (the score becomes
    (1 - a) * cos(head) + a * cos(ConSE embedding)). The learned head knows only the seen classes; the image tower's
    own 1000 ImageNet concepts know many more, and named, they point at unseen classes the head never saw. Returns
    why it was left off (a tower without an ImageNet head, a Siamese similarity), or None."""
    if cfg.bridge.alpha <= 0:
        return None
    if not p.image_tower.has_imagenet_head:
        return f"{p.image_tower.tower_id} has no ImageNet head"
    if cfg.head.similarity != "cosine":
        return "the concept bridge blends cosines; head.similarity is not cosine"
    attach_concept_bridge(model, p.text_tower, cfg.bridge, cfg.cache_dir)
    return None


def class_scores(model: DualEncoder, p: Prepared, x: np.ndarray) -> np.ndarray:
    zs = ZeroShotClassifier(model, p.descriptions, p.vocab_feats, p.vocab)
    with torch.inference_mode():
        return zs.scores(model.embed_image_features(torch.from_numpy(x)))


def calibrate_gamma(cfg: RunConfig, p: Prepared, scorer=None, progress: bool = False) -> float:
    """GZSL calibration chosen on the SEEN classes only. In each of several pseudo splits some seen classes play
    unseen and a small model is trained on the rest; the H-versus-gamma curves of those models, measured on the
    seen-class training images, are averaged and their best gamma kept. One pseudo split is a noisy guide (the
    classes that play unseen decide it); the average over several is not. The small models train for
    ``train.gzsl_epochs`` (30): on the dev splits their gamma varied less from split to split than at 150 epochs
    (0.12-0.165 against 0.11-0.22) and the job's calibration went from 27 s to about 5.

    ``scorer(classes) -> (features -> (N, n_classes) scores)`` fits another method on ``classes``; by default it
    is ``train_model`` with one head."""
    if scorer is None:
        # a fine-tuned run calibrates on head-only pseudo-split models (a fine-tune per pseudo split would be
        # several times the cost of the run itself), each trained for train.gzsl_epochs
        epochs = cfg.train.gzsl_epochs or cfg.train.epochs
        heads_only = cfg.model_copy(update={"towers": cfg.towers.model_copy(update={"unlock_image_last_n": 0}),
                                            "train": cfg.train.model_copy(update={"epochs": epochs})})

        def scorer(classes):
            small = train_model(heads_only, p, seen=classes, progress=progress, ensemble=1)
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


def features_for(model: DualEncoder, p: Prepared) -> Prepared:
    """``p`` as ``model`` sees it: the same when its image tower is the frozen one, else with the features of its
    fine-tuned tower."""
    return tuned_features(model, p, model.tuned_blocks) if model.tuned_blocks else p


def evaluate_model(model: DualEncoder, p: Prepared, gamma: float = 0.0, probe: bool = True) -> dict:
    p = features_for(model, p)
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
              "n_skipped": len(p.skipped), "descriptions_fallback": list(p.descriptions.fallback),
              "bridge": {"alpha": model.bridge_alpha, "off": model.bridge_off}, "seconds": {"embed": round(t_embed, 1), "total": round(time.time() - t0, 1)},
              "config": cfg.model_dump()}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    result["table"] = format_table(p, metrics)
    return result
