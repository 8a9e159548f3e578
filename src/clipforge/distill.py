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

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from .cache import EmbeddingCache, embed_texts
from .config import MAX_LR, Strict
from .data.captions import folds, load_caption_source
from .errors import ClipforgeError
from .heads import Projection
from .losses import distill_loss
from .paths import features_cache
from .towers.base import Tower
from .train import ParamGroup, Trainer, seed_everything

SCHEME = "distill:"


class StudentTextTower(Tower):
    """Frozen base text tower -> trainable projection -> L2 normalisation (the teacher tower's output space)."""
    modality = "text"
    weights_from_id = False  # the projection is learned: always saved with the model

    def __init__(self, base: Tower, out_dim: int, kind: str = "mlp", hidden: int = 1024, dropout: float = 0.1):
        super().__init__()
        if base.modality != "text":
            raise ClipforgeError(f"a student text tower needs a text base tower, not {base.tower_id}")
        self.base = base
        self.kind, self.hidden, self.dropout = kind, hidden, dropout
        self.head = Projection(base.dim, out_dim, kind, hidden, dropout)
        self.dim = int(out_dim)
        self.tower_id = SCHEME + base.tower_id

    def tower_config(self) -> dict:
        return {"base": self.base.tower_id, "dim": self.dim, "kind": self.kind, "hidden": self.hidden,
                "dropout": self.dropout}

    def prepare(self, items):
        return list(items)

    def base_features(self, texts: list[str]) -> torch.Tensor:
        """Base tower features; through ``feature_cache`` (an EmbeddingCache, not saved) when one is set."""
        cache = getattr(self, "feature_cache", None)
        if cache is not None:
            return torch.from_numpy(embed_texts(self.base, list(texts), cache))
        return torch.from_numpy(self.base.encode(list(texts)))

    @torch.inference_mode()
    def encode(self, items, batch_size: int = 64) -> np.ndarray:
        was_training = self.training
        self.eval()
        out = self.project(self.base_features(list(items))).numpy() if len(items) else np.zeros((0, self.dim), np.float32)
        self.train(was_training)
        return out.astype(np.float32)

    def project(self, base_feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(base_feats.float()), dim=-1)

    def forward(self, texts) -> torch.Tensor:
        return self.project(self.base_features(texts))

    def blocks(self):
        return [self.head]

    def preprocess_key(self) -> dict:
        """The learned weights are part of the key: two students with one id must never share cached features."""
        h = hashlib.sha256()
        for k, v in sorted(self.head.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().contiguous().numpy().tobytes())
        return {"base": self.base.fingerprint(), "config": self.tower_config(), "weights": h.hexdigest()[:16]}

    def unlock(self, last_n: int | None = None) -> "Tower":
        """Only the projection trains; the base tower (numpy/C or locked) never does."""
        self.lock()
        for p in self.head.parameters():
            p.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> "StudentTextTower":
        super().train(mode)
        self.base.train(False)
        return self


def build_student(spec: str, config: dict | None) -> StudentTextTower:
    """``distill:<base id>`` + its saved tower_config -> an (untrained) student; weights come from the model file."""
    from .towers import build_tower
    base_id = spec[len(SCHEME):]
    if config is None:
        raise ClipforgeError(f"text tower '{spec}' is a distilled student: it needs its saved tower_config "
                             "(load it with DualEncoder.from_pretrained from the folder that distill wrote)")
    if config.get("base") not in (None, base_id):
        raise ClipforgeError(f"student tower '{spec}' was saved with base '{config['base']}'")
    base = build_tower(base_id, "text")
    return StudentTextTower(base, config["dim"], config.get("kind", "mlp"), config.get("hidden", 1024),
                            config.get("dropout", 0.1))


# -- configs ---------------------------------------------------------------------------------------------------

class DistillDataConfig(Strict):
    sources: list[str] = Field(["tux-paint", "emoji"], description="caption sources with translations; "
                               "each image's caption and its translation form a parallel pair")
    language: str = Field("zh", description="the student's other language (a translation the sources have)")
    folds: int = Field(5, ge=2, description="tux-paint: k of the retrieval protocol's split")
    fold: int | None = Field(0, ge=0, description="tux-paint: the HELD-OUT fold, whose captions are never used; "
                                                  "null = use every caption (no retrieval evaluation after)")
    split_seed: int = Field(0, ge=0)
    english_too: bool = Field(True, description="also train student(en) -> teacher(en), so English keeps working")


class StudentConfig(Strict):
    base: str = Field("pkg:e5-small-query", description="frozen multilingual tower under the student's projection")
    kind: str = Field("mlp", pattern="^(linear|mlp)$")
    hidden: int = Field(1024, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class DistillTrainConfig(Strict):
    loss: str = Field("cosine", pattern="^(mse|cosine)$", description="losses.distill_loss kind")
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0.0, le=MAX_LR)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_steps: int = Field(10, ge=0)
    seed: int = 0


class DistillConfig(Strict):
    teacher: str = Field("runs/tux-retrieval/model", description="a saved English clipforge model (its text tower is the teacher)")
    data: DistillDataConfig = DistillDataConfig()
    student: StudentConfig = StudentConfig()
    train: DistillTrainConfig = DistillTrainConfig()
    out: str = "runs/distill"
    cache_dir: str = Field(default_factory=features_cache, description="embedding cache (default: the user cache dir)")


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
    from .model import DualEncoder
    from .towers import build_tower
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
    student.feature_cache = cache if cache.root is not None else None
    student.head.fit_normalizer(x)
    student.unlock()
    bs = min(train_cfg.batch_size, len(x))
    steps = max(1, len(x) // bs)

    def batches(epoch: int):
        order = torch.from_numpy(np.random.RandomState([train_cfg.seed, epoch]).permutation(len(x)))
        for s in range(steps):
            yield order[s * bs:(s + 1) * bs]

    def step(idx):
        out = student.project(x[idx])
        return distill_loss(out, y[idx], train_cfg.loss)

    trainer = Trainer(student, [ParamGroup("student_head", student.head, train_cfg.lr, train_cfg.weight_decay)],
                      train_cfg.epochs, steps, out_dir, train_cfg.warmup_steps, 1.0, 50, progress,
                      tensorboard=out_dir is not None, checkpoint_every=max(1, train_cfg.epochs))
    trainer.fit(batches, step)
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
    from .model import DualEncoder
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


__all__ = ["StudentTextTower", "DistillConfig", "parallel_text", "distill", "run", "build_student"]
