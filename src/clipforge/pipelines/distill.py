"""Teacher-learning distillation of the text tower on parallel text (AltCLIP stage 1), on a CPU.

The teacher is an aligned English clipforge model; what the student must reproduce is the teacher's
TEXT TOWER output (for the packaged Tux Paint model: normalised MiniLM sentence embeddings), so every part
downstream of the tower (text head if any, ConSE label bridge, the trained image head) keeps working
unchanged. The student reads English AND Chinese: for every parallel pair (en, zh) both
``student(en)`` and ``student(zh)`` are pulled onto ``teacher(en)``, with MSE or cosine loss
(``losses.distill_loss``). Only parallel text is used (no image): Tux Paint caption translations of the
TRAINING folds (never the held-out fold) and the emoji en/zh names.

The student is a ``StudentTextTower``: a frozen multilingual tower (``pkg:use-m3`` / ``pkg:e5-small``, whose
features are cached) followed by a trainable projection (linear or MLP) onto the teacher's width, output
L2-normalised like the teacher's. Its id ``distill:<base id>`` plus its saved ``tower_config`` and weights
let ``DualEncoder.from_pretrained`` rebuild it.

The result of ``distill`` is the teacher model with its text tower replaced by the student: a bilingual
CLIP already (zero-shot, retrieval in zh), that stage 2 (``clipforge train`` with ``init:`` and
``data.language: en+zh``, configs/bilingual-train.yaml) fine-tunes contrastively on mixed captions.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from clipforge.embed.cache import EmbeddingCache, embed_texts
from clipforge.data.captions import folds, load_caption_source
from clipforge.errors import ClipforgeError
from clipforge.losses.distill import DistillObjective
from clipforge.train.trainer import ParamGroup, Trainer, seed_everything
from clipforge.towers.student import StudentTextTower
from clipforge.config import DistillConfig, DistillTrainConfig, StudentConfig  # noqa: F401 (their old home)


# -- configs ---------------------------------------------------------------------------------------------------


# -- parallel text -------------------------------------------------------------------------------------------

def parallel_text(sources: list[str], language: str = "zh", fold: int | None = None, k: int = 5,
                  split_seed: int = 0, exclude: dict[str, np.ndarray] | None = None) -> tuple[list[str], list[str]]:
    """(English, translation) pairs from the sources' captions. For ``tux-paint`` the held-out ``fold`` of the
    retrieval protocol (same ``folds`` as bench tux-retrieval) is left out; ``exclude`` maps a source to
    more image indices to leave out (an inner validation split)."""
    en, other = [], []
    for spec in sources:
        ds = load_caption_source(spec)
        if language not in ds.translations:
            raise ClipforgeError(f"caption source '{spec}' has no '{language}' translations; it has {sorted(ds.translations)}")
        drop = set()
        if spec.split(":")[0] == "tux-paint" and fold is not None:
            drop |= set(folds(len(ds), k, split_seed)[fold].tolist())
        if exclude and spec in exclude:
            drop |= set(np.asarray(exclude[spec]).tolist())
        for i, (caps, trs) in enumerate(zip(ds.captions, ds.translations[language])):
            if i in drop or not caps or not trs:
                continue
            for t in trs:
                en.append(caps[0])
                other.append(t)
    if not en:
        raise ClipforgeError(f"no parallel en/{language} text in {sources}")
    return en, other


def distill(teacher, en: list[str], other: list[str], student_cfg: StudentConfig = StudentConfig(),
            train_cfg: DistillTrainConfig = DistillTrainConfig(), cache: EmbeddingCache | None = None,
            english_too: bool = True, progress: bool = False, out_dir: str | Path | None = None):
    """Train a student on parallel text; return the teacher model with its text tower replaced by the student.

    ``teacher``: a DualEncoder whose text tower defines the target space (its features are cached)."""
    from clipforge.model.dual_encoder import DualEncoder
    from clipforge.towers import build_tower
    cache = cache or EmbeddingCache(None)
    seed_everything(train_cfg.seed)
    base = build_tower(student_cfg.base, "text")
    if not base.is_locked and any(True for _ in base.parameters()):
        base.lock()
    src = (en + other) if english_too else list(other)
    x = torch.from_numpy(embed_texts(base, src, cache))
    y_en = torch.from_numpy(embed_texts(teacher.text_tower, list(en), cache))  # the teacher embeds each sentence once
    y = torch.cat([y_en, y_en]) if english_too else y_en
    student = StudentTextTower(base, y.shape[1], student_cfg.kind, student_cfg.hidden, student_cfg.dropout)
    student.cached_base = (lambda texts: embed_texts(student.base, texts, cache)) if cache.root is not None else None
    student.head.fit_normalizer(x)
    student.unlock()
    objective = DistillObjective(student, x, y, train_cfg.loss, train_cfg.batch_size, train_cfg.seed)
    trainer = Trainer(student, [ParamGroup("student_head", student.head, train_cfg.lr, train_cfg.weight_decay)],
                      train_cfg.epochs, objective.steps_per_epoch, out_dir, train_cfg.warmup_steps, 1.0, 50, progress,
                      tensorboard=out_dir is not None, checkpoint_every=max(1, train_cfg.epochs))
    trainer.fit(objective.batches, objective)
    student.lock().eval()
    model = DualEncoder(teacher.image_tower, student, teacher.head_cfg, teacher.ensemble,
                        tower_opts=teacher.tower_opts)
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("text_tower.")}
    if teacher.bridge is not None:
        model.attach_bridge(teacher.bridge.class_text.clone(), teacher.bridge_alpha, teacher.bridge.temperature)
    model.load_state_dict(state, strict=False)
    model.distill_history = trainer.state.history
    return model.eval()


@torch.inference_mode()
def agreement(teacher, student_model, en: list[str], other: list[str]) -> dict:
    """Mean cosine of student(en) and student(other) with teacher(en): how well the student mimics the teacher."""
    t = teacher.text_tower.encode(en)
    s_en = student_model.text_tower.encode(en)
    s_o = student_model.text_tower.encode(other)
    cos = lambda a, b: float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))
    return {"cos_student_en": cos(s_en, t), "cos_student_other": cos(s_o, t), "n_pairs": len(en)}


def run(cfg: DistillConfig, progress: bool = True) -> dict:
    """The distill stage: load the teacher, collect parallel text, train, save the bilingual model + results."""
    from clipforge.model.dual_encoder import DualEncoder
    t0 = time.time()
    teacher = DualEncoder.from_pretrained(cfg.teacher)
    d = cfg.data
    en, other = parallel_text(d.sources, d.language, d.fold, d.folds, d.split_seed)
    cache = EmbeddingCache(cfg.cache_dir)
    out = Path(cfg.out)
    model = distill(teacher, en, other, cfg.student, cfg.train, cache, d.english_too, progress, out / "checkpoints")
    model.save_pretrained(out / "model")
    result = {"stage": "distill", "teacher": cfg.teacher, "teacher_text_tower": teacher.text_tower.tower_id,
              "student": model.text_tower.tower_id, "n_pairs": len(en), "language": d.language,
              "held_out_fold": d.fold, "agreement_train": agreement(teacher, model, en[:500], other[:500]),
              "history": model.distill_history[-5:], "seconds": round(time.time() - t0, 1),
              "config": cfg.model_dump()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return result


__all__ = ["StudentTextTower", "DistillConfig", "parallel_text", "distill", "run"]
