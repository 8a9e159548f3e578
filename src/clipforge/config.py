"""Typed configs for every stage, loaded from YAML/JSON and overridable from the command line.

Why pydantic with ``extra="forbid"``: a typo such as ``lerning_rate`` must fail loudly with the field's
name, not silently train with the default. Overrides use dotted paths (``train.lr=1e-3``) so any field of
a file can be changed on the command line without writing a new file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from clipforge.errors import ConfigError
from clipforge.util.paths import features_cache

# Above this, AdamW's update (lr * weight_decay on float32 weights) overflows or diverges at once: a typo, not a choice.
MAX_LR = 10.0


class Strict(BaseModel):
    """Base of every config: unknown fields, non-finite floats and booleans given for numbers are errors.

    Why not pydantic's ``strict=True``: YAML reads ``1e-3`` (no dot) as a string, so numeric strings must still
    become floats; what must never pass is ``epochs: true`` (lax mode reads it as 1) or ``lr: .inf``.
    """
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        kinds = {annotation, *get_args(annotation)}
        if isinstance(value, bool) and kinds & {int, float}:
            raise ValueError("needs a number, not true/false")
        return value


class DataConfig(Strict):
    source: str = Field("fashion-mnist", description="'fashion-mnist', 'awa2:<dir>' or 'folder:<dir>'")
    train_per_class: int | None = Field(300, ge=1, description="images per class used for training; null = all")
    test_per_class: int | None = Field(200, ge=1, description="images per class used for testing; null = all")
    split_seed: int = Field(0, ge=0, description="seed of the seen/unseen split (docs/benchmarks.md)")
    n_unseen: int = Field(3, ge=1)
    unseen: list[str] | None = Field(None, description="explicit unseen class names (overrides split_seed)")
    descriptions: str = Field("auto", description="'names', 'templates', 'wordnet', 'auto' (packaged file when one exists, else WordNet), or a file path")
    seed: int = 0


class TowersConfig(Strict):
    image: str = "pkg:efficientnet-lite0"
    text: str = "pkg:all-MiniLM-L6-v2"
    image_size: int | None = Field(None, ge=16, le=1024, description="tower input size in pixels; null = the tower's "
                                   "native size (224 for EfficientNet-Lite0; docs/zero-shot.md)")
    invert: bool | None = Field(None, description="invert grey images (light object on dark -> dark on light); null = dataset default")
    unlock_image_last_n: int = Field(0, ge=0, le=64, description="fine-tune the image tower's last N blocks with the "
                                     "heads (the seed's recipe; train.lr_image_tower); 0 = frozen tower, cached features")


class HeadConfig(Strict):
    kind: Literal["linear", "mlp"] = "linear"
    embed_dim: int = Field(384, ge=2, description="shared embedding width")
    hidden: int = Field(512, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    input_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the tower features (strong regulariser for small data)")
    text_head: bool = Field(False, description="project the text side too (else text embeddings are used as they are)")
    similarity: Literal["cosine", "siamese"] = "cosine"
    siamese_shared: bool = True
    siamese_hidden: int = Field(256, ge=1)
    init_temperature: float = Field(0.1, gt=0.0)
    learn_temperature: bool = True
    init_bias: float | None = Field(-5.0, description="learnable logit bias (SigLIP-style); does not change rankings")


class LossConfig(Strict):
    kind: Literal["multilabel", "class-softmax", "pair", "batch-clip"] = "multilabel"
    reduction: Literal["mean", "sum"] = Field("mean", description="batch-clip: mean (CLIP) or sum (the seed 'Contrastive') of the two directions")
    pair_variant: Literal["l1", "bce", "margin"] = "l1"
    margin: float = 0.2
    structure_weight: float = Field(0.0, ge=0.0, description="weight of the STRUCTURE regulariser (keep the image "
                                    "tower's neighbourhoods in the learned space; losses.functional.structure_loss); 0 = off")
    structure_temperature: float = Field(0.1, gt=0.0, description="softmax temperature of its neighbour distributions")
    structure_sample: int = Field(512, ge=2, description="images per step the regulariser compares (a random subset "
                                  "of the batch: its cost grows with the square)")


class TrainConfig(Strict):
    epochs: int = Field(150, ge=1)
    batch_size: int = Field(0, ge=0, description="0 = full batch (cached features fit in memory)")
    lr: float = Field(1e-2, gt=0.0, le=MAX_LR)
    lr_similarity: float | None = Field(None, gt=0.0, le=MAX_LR, description="own learning rate for the similarity net")
    lr_image_tower: float = Field(1e-4, gt=0.0, le=MAX_LR, description="the unlocked image-tower blocks "
                                  "(towers.unlock_image_last_n)")
    weight_decay: float = Field(1e-2, ge=0.0, le=MAX_LR)
    warmup_steps: int = Field(10, ge=0)
    grad_clip: float = Field(1.0, ge=0.0)
    ensemble: int = Field(5, ge=1, description="heads trained from different seeds, scores averaged")
    gzsl_pseudo_splits: int = Field(6, ge=1, description="pseudo-unseen splits of the seen classes that choose the "
                                                         "GZSL calibration (their H curves are averaged)")
    gzsl_epochs: int | None = Field(30, ge=1, description="epochs of each pseudo-split calibration model; null = "
                                    "train.epochs. 30 was chosen on the 5 dev splits (docs/benchmarks.md): mean "
                                    "GZSL H 0.573 against 0.567 at 150, at a fifth of the cost")
    seed: int = 0
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(25, ge=1, description="epochs between last.pt checkpoints")


# The class pipeline's concept-bank weight, chosen on the 5 development splits (docs/benchmarks.md).
CLASS_BRIDGE_ALPHA = 0.4


class BridgeConfig(Strict):
    alpha: float = Field(0.35, ge=0.0, lt=1.0, description="weight of the ConSE label bridge in the score; 0 = off")
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature of the ImageNet probabilities")
    template: str = Field("a {}.", description="how an ImageNet class name becomes a sentence")


class RunConfig(Strict):
    data: DataConfig = DataConfig()
    towers: TowersConfig = TowersConfig()
    head: HeadConfig = HeadConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    bridge: BridgeConfig = Field(default_factory=lambda: BridgeConfig(alpha=CLASS_BRIDGE_ALPHA),
                                 description="the ImageNet concept bank blended into the scores (docs/zero-shot.md); "
                                 "skipped, and said so in results.json, for an image tower without an ImageNet head")
    out: str = "runs/fashion-zsl"
    cache_dir: str = Field(default_factory=features_cache, description="embedding cache (default: the user cache dir)")


# -- image-caption training (the seeds "Contrastive" and "CLIP-Chinese"): train and eval stages ---------------

class CaptionDataConfig(Strict):
    source: str | list[str] = Field("tux-paint", description="'tux-paint', 'emoji', 'csv:<file>', 'captions:<dir with "
                                    "captions.csv>', 'wds:<shards, e.g. data/{00000..00009}.tar>', or a list of these "
                                    "trained as one set (e.g. [tux-paint, emoji])")
    caption_field: str = Field("txt", min_length=1, description="wds: sources: the caption's member ('txt': {key}.txt) "
                                                                "or a field of {key}.json ('caption')")
    valid_source: str | None = Field(None, description="a separate held-out set (e.g. datasets/valid); else fold `fold` is held out")
    language: str = Field("en", description="caption language: 'en', a translation the source has ('zh'), or a mix "
                                            "('en+zh': every image's captions in both, one batch holds both languages)")
    folds: int = Field(5, ge=2, description="k of the k-fold split (docs/benchmarks.md)")
    fold: int | None = Field(0, ge=0, description="held-out fold; null = train on everything")
    split_seed: int = Field(0, ge=0)


class CaptionTowersConfig(Strict):
    image: str = "pkg:efficientnet-lite0"
    text: str = "pkg:all-MiniLM-L6-v2"
    image_size: int = Field(224, ge=16, le=1024)
    invert: bool = False
    lock_image: bool = Field(True, description="LiT: keep the image tower frozen (its features are cached)")
    lock_text: bool = Field(True, description="keep the text tower frozen (its features are cached)")
    unlock_image_last_n: int = Field(0, ge=0, description="with lock_image=false: train only the last N blocks (0 = all)")
    unlock_text_last_n: int = Field(0, ge=0, description="with lock_text=false: train only the last N blocks (0 = all)")


class ContrastiveLossConfig(Strict):
    kind: Literal["clip", "siglip", "pair"] = Field("clip", description="clip (symmetric InfoNCE), siglip, or pair "
                                                   "(the seed Pretrained_Model_Alignment: one right + one wrong caption)")
    pair_variant: Literal["l1", "bce", "margin"] = "l1"
    reduction: Literal["mean", "sum"] = Field("mean", description="mean (CLIP) or sum (the seed 'Contrastive') of the two directions")


class CaptionTrainConfig(Strict):
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(0, ge=0, description="0 = full batch (cached features fit in memory)")
    lr: float = Field(1e-3, gt=0.0, le=MAX_LR, description="heads")
    lr_similarity: float | None = Field(None, gt=0.0, le=MAX_LR, description="temperature/bias; null = lr")
    lr_image_tower: float = Field(1e-5, gt=0.0, le=MAX_LR)
    lr_text_tower: float = Field(1e-5, gt=0.0, le=MAX_LR)
    weight_decay: float = Field(0.05, ge=0.0, le=MAX_LR)
    warmup_steps: int = Field(10, ge=0)
    grad_clip: float = Field(1.0, ge=0.0)
    ensemble: int = Field(3, ge=1)
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="bf16 autocast on CPU; fp16/bf16 AMP on CUDA")
    accum_steps: int = Field(1, ge=1, description="micro-batches per step, negatives from the whole batch (gradient caching)")
    augment: bool = Field(False, description="random crops/flips/colour (kornia) on the image side; re-encodes images each step")
    cache_features: bool = Field(True, description="locked towers: embed once and train on cached features (false = re-encode every step, as open_clip's LiT does)")
    checkpoint_every: int = Field(25, ge=1, description="epochs between last.pt checkpoints")
    log_every: int = Field(10, ge=1)


def _caption_head() -> HeadConfig:
    return HeadConfig(kind="mlp", hidden=1024, dropout=0.5, input_dropout=0.5, init_temperature=0.07, init_bias=None)


class CaptionRunConfig(Strict):
    init: str | None = Field(None, description="start from a saved clipforge model (e.g. the distill stage's "
                             "runs/distill/model): its towers and head weights; towers.image/text are then not used")
    data: CaptionDataConfig = CaptionDataConfig()
    towers: CaptionTowersConfig = CaptionTowersConfig()
    head: HeadConfig = Field(default_factory=_caption_head)
    bridge: BridgeConfig = BridgeConfig()
    loss: ContrastiveLossConfig = ContrastiveLossConfig()
    train: CaptionTrainConfig = CaptionTrainConfig()
    out: str = "runs/tux-retrieval"
    cache_dir: str = Field(default_factory=features_cache, description="embedding cache (default: the user cache dir)")


class CaptionEvalConfig(Strict):
    model: str = Field("runs/tux-retrieval/model", description="a saved clipforge model directory")
    data: CaptionDataConfig = CaptionDataConfig()
    chunk: int = Field(1024, ge=1, description="queries scored at a time (memory)")
    examples: int = Field(8, ge=0, description="retrieval examples kept for the report")
    out: str = Field("runs/tux-retrieval/eval.json", description="where the metrics JSON goes")
    cache_dir: str = Field(default_factory=features_cache, description="embedding cache (default: the user cache dir)")


# -- distillation of a multilingual student (pipelines/distill.py) ----------------------------------------

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



def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config field '{field}': remove it or check its spelling")
        else:
            lines.append(f"config field '{field}': {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (['a','b'], value). Values are parsed as YAML so ``1e-3``, ``true``, ``[a,b]`` work."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like field.path=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    return key.strip().split("."), value


def build_config(cls: type[Strict], data: dict | None = None, overrides: list[str] = ()) -> Strict:
    """Validate ``data`` (+ dotted overrides) into ``cls``; raise ConfigError naming the bad field."""
    data = json.loads(json.dumps(data or {}))
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[path[-1]] = value
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


PACKAGED = Path(__file__).resolve().parent / "configs"


def packaged_names() -> list[str]:
    """Names of the configs shipped in the package (``caption-train``, ``siglip``, ``lit-text``, ...)."""
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def config_path(path: str | Path | None) -> Path | None:
    """A file, or the name of a packaged config (``caption-train`` or ``caption-train.yaml``): a file that exists
    wins, so a local ``siglip.yaml`` is never shadowed by the packaged one."""
    if path is None:
        return None
    p = Path(path)
    if p.exists():
        return p
    packaged = PACKAGED / (p.name if p.suffix else f"{p.name}.yaml")
    return packaged if p.parent == Path(".") and packaged.is_file() else p


def _config_classes() -> list[type[Strict]]:
    # The order breaks ties (RunConfig first).
    return [RunConfig, CaptionRunConfig, CaptionEvalConfig, DistillConfig]


def _field_paths(cls: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, f in cls.model_fields.items():
        out.add(prefix + name)
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            out |= _field_paths(f.annotation, f"{prefix}{name}.")
    return out


def _data_paths(data: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in data.items():
        out.add(f"{prefix}{k}")
        if isinstance(v, dict):
            out |= _data_paths(v, f"{prefix}{k}.")
    return out


def pick_config_class(data: dict, overrides: list[str] = ()) -> type[Strict]:
    """The config class whose fields cover most of what ``data`` and the overrides set.

    Why by fields: a caption YAML has ``data.fold`` or ``data.language``, an eval YAML ``model``, a distill YAML
    ``teacher``; a file that every class could read (say, only ``train.epochs``) is a RunConfig, as before.
    """
    used = _data_paths(data) | {".".join(parse_override(o)[0]) for o in overrides}
    best, best_score = RunConfig, -1
    for cls in _config_classes():
        score = len(used & _field_paths(cls))
        if score > best_score:
            best, best_score = cls, score
    return best


def _read_config_file(p: Path) -> dict:
    if p.is_dir():
        raise ConfigError(f"config '{p}' is a directory; give a YAML/JSON file or a packaged name "
                          f"({', '.join(packaged_names())})")
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist (packaged names: {', '.join(packaged_names())})")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{p}' is not UTF-8 text ({e.reason} at byte {e.start}); "
                          "re-save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML/JSON: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of sections, not {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls: type[Strict] | None = None) -> Strict:
    """Load a YAML or JSON file, a packaged config name (``caption-train``), or nothing, into a typed config.

    ``cls`` chooses the config class; by default it is picked from the fields the file and overrides set
    (``pick_config_class``), so ``load_config("caption-train")`` gives a CaptionRunConfig.
    """
    data: dict = {}
    p = config_path(path)
    if p is not None:
        data = _read_config_file(p)
    if cls is None:
        cls = pick_config_class(data, overrides)
    return build_config(cls, data, overrides)
