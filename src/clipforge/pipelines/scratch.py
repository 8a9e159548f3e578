"""A CLIP trained from scratch on labelled images with templated captions (the seed "MNIST CLIP", fixed).

Each training image is paired with a caption drawn at random from its class's templates ("a handwritten
seven.", "the digit shown is 7"...), and a batch is scored CLIP-style: B images x B captions. What the seed
got wrong, and how this does it:

* temperature: logits = cos / T (``CosineSimilarity``), not cos * T;
* duplicates: two images of one class in a batch are POSITIVES of each other's captions
  (``clip_loss`` with a positives matrix built from labels), so batches need not be class-balanced;
* validation: accuracy is zero-shot classification of held-out images against every class's prompts
  (a template ensemble), not a batch compared with arange targets.

The text tower is either from scratch (``scratch:text-small``, vocabulary built from the captions, trained)
or a packaged pretrained one (``pkg:all-MiniLM-L6-v2``, frozen: its caption features are computed once and
only a text head is trained). Every ``heatmap_every`` steps the images x texts similarity of a fixed probe
set is logged to TensorBoard as an image.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from clipforge.config import HeadConfig
from clipforge.data.descriptions import from_templates
from clipforge.evaluate.report_figures import heatmap_figure
from clipforge.evaluate.zeroshot import ZeroShotClassifier, topk_metrics
from clipforge.losses.scratch import ScratchObjective
from clipforge.model.dual_encoder import DualEncoder
from clipforge.towers import build_tower
from clipforge.train.trainer import ParamGroup, Trainer, seed_everything

DIGIT_TEMPLATES = [
    "the digit shown is {}.",
    "a handwritten {}.",
    "a photo of the number {}.",
    "a drawing of the digit {}.",
    "this is a {}.",
    "the number {}.",
    "a scan of a handwritten {}.",
    "an image of the digit {}.",
    "a {}.",
    "{}",
]


@dataclass
class ScratchClipConfig:
    image_tower: str = "scratch:cnn-small"
    text_tower: str = "scratch:text-small"
    embed_dim: int = 64
    epochs: int = 12
    batch_size: int = 128
    lr: float = 3e-3                  # towers and heads
    weight_decay: float = 0.01
    warmup_steps: int = 60
    init_temperature: float = 0.07
    augment: bool = True              # small random shifts, rotations, scales of the images
    templates: list[str] = field(default_factory=lambda: list(DIGIT_TEMPLATES))
    seed: int = 0
    heatmap_every: int = 100          # steps between TensorBoard similarity heatmaps (0 = never)
    monitor: bool = True              # zero-shot accuracy on the held-out images after every epoch (curve only)


class ScratchClip:
    """Builds the towers and heads, trains them, and scores held-out images by text prompts."""

    def __init__(self, class_names: list[str], cfg: ScratchClipConfig | None = None, image_size: int = 28):
        self.cfg = cfg = cfg or ScratchClipConfig()
        self.class_names = list(class_names)
        self.descriptions = from_templates(self.class_names, cfg.templates)
        # class-major, every (class, template) once: caption_index() relies on this order
        self.captions = [s for sents in self.descriptions.sentences for s in sents]
        seed_everything(cfg.seed)
        image = build_tower(cfg.image_tower, "image", image_size=image_size, invert=False)
        text = build_tower(cfg.text_tower, "text")
        if text.needs_vocab:
            text.fit_vocab(self.captions)
        image.unlock()
        self.text_trainable = not text.weights_from_id
        text.unlock() if self.text_trainable else text.lock()
        head = HeadConfig(kind="linear", embed_dim=cfg.embed_dim, text_head=True, similarity="cosine",
                          init_temperature=cfg.init_temperature, learn_temperature=True, init_bias=None)
        self.model = DualEncoder(image, text, head, ensemble=1, seed=cfg.seed,
                                 tower_opts={"image_size": image_size, "invert": False})
        self.caption_feats = None
        if not self.text_trainable:  # frozen pretrained text tower: its caption features never change
            self.caption_feats = torch.from_numpy(text.encode(self.captions))
            self.model.text_head.fit_normalizer(self.caption_feats)
        self.caption_inputs = text.prepare(self.captions) if self.text_trainable else None

    # -- training -----------------------------------------------------------------------------------
    def fit(self, train_x: np.ndarray, train_y: np.ndarray, out_dir=None, monitor=None, progress: bool = False,
            probe: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict]:
        """Train on uint8 images and labels; ``monitor=(x, y)`` adds held-out top-1 to each epoch's record."""
        cfg, m = self.cfg, self.model
        objective = ScratchObjective(m, m.image_tower.prepare(train_x), torch.as_tensor(train_y, dtype=torch.long),
                                     len(cfg.templates), cfg.batch_size, cfg.seed, self.caption_feats,
                                     self.caption_inputs, cfg.augment)
        groups = [ParamGroup("image_tower", m.image_tower, cfg.lr, cfg.weight_decay),
                  ParamGroup("image_head", m.image_head, cfg.lr, cfg.weight_decay),
                  ParamGroup("text_head", m.text_head, cfg.lr, cfg.weight_decay),
                  ParamGroup("similarity", m.similarity, cfg.lr, 0.0)]
        if self.text_trainable:
            groups.insert(1, ParamGroup("text_tower", m.text_tower, cfg.lr, cfg.weight_decay))
        trainer = Trainer(m, groups, cfg.epochs, objective.steps_per_epoch, out_dir, cfg.warmup_steps, grad_clip=1.0,
                          log_every=10, progress=progress, tensorboard=out_dir is not None, checkpoint_every=cfg.epochs)
        steps = objective.steps_per_epoch
        eval_fn = (lambda: self.evaluate(*monitor)["top1"]) if monitor is not None else None
        on_step = None
        if trainer.writer is not None and cfg.heatmap_every and probe is not None:
            def on_step(s):
                if s % cfg.heatmap_every == 0 or s == cfg.epochs * steps:
                    self.log_heatmap(trainer.writer, probe, s)
        state = trainer.fit(objective.batches, objective, eval_fn=eval_fn, on_step=on_step)
        if trainer.writer is not None:
            trainer.writer.close()
        self.model.eval()
        return list(state.history)

    # -- evaluation ---------------------------------------------------------------------------------
    def classifier(self) -> ZeroShotClassifier:
        return ZeroShotClassifier(self.model, self.descriptions)

    def scores(self, x: np.ndarray, zs: ZeroShotClassifier | None = None) -> np.ndarray:
        """(N, C) cosine similarities of images to each class's prompt ensemble."""
        return (zs or self.classifier()).scores(self.model.encode_image(x, batch_size=256))

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict:
        """10-way (N-way) classification of images by text prompts: top1, top5, mean per-class recall, confusion."""
        was = self.model.training
        out = topk_metrics(self.scores(x), np.asarray(y), list(range(len(self.class_names))))
        self.model.train(was)
        return out

    def log_heatmap(self, writer, probe: tuple[np.ndarray, np.ndarray], step: int) -> None:
        """images x class-prompt similarity of the probe set, as a TensorBoard image ``similarity/images_x_texts``."""
        was = self.model.training
        s = self.scores(probe[0])
        self.model.train(was)
        writer.add_figure("similarity/images_x_texts", heatmap_figure(
            s, [self.class_names[int(v)] for v in probe[1]], self.class_names, f"step {step}"), step)

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def probe_indices(labels: np.ndarray, per_class: int = 2) -> np.ndarray:
    """The first ``per_class`` items of every class, class by class: a fixed set for similarity heatmaps."""
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])


def train_and_evaluate(split, cfg: ScratchClipConfig, out_dir=None, progress: bool = False) -> dict:
    """Train on ``split`` (a DigitSplit), evaluate on its test images; metrics, history and timings."""
    t0 = time.time()
    clip = ScratchClip(split.class_names, cfg, image_size=split.train_x.shape[-1])
    p = probe_indices(split.test_y)
    history = clip.fit(split.train_x, split.train_y, out_dir=out_dir, progress=progress,
                       monitor=(split.test_x, split.test_y) if cfg.monitor else None,
                       probe=(split.test_x[p], split.test_y[p]))
    t_train = time.time() - t0
    metrics = clip.evaluate(split.test_x, split.test_y)
    return {"clip": clip, "metrics": metrics, "history": history, "train_seconds": t_train,
            "seconds": time.time() - t0}
