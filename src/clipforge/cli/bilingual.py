"""Bilingual and interop commands: distill (AltCLIP stage 1), zeroshot (class names x templates, en or zh), export
(sentence-transformers / ONNX), and the bilingual benchmarks tux-retrieval-zh and fashion-zsl-zh.

Stage 2 of distillation is ``clipforge train -c bilingual-train`` (an ``init:`` model, ``data.language: en+zh``)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from clipforge.errors import ClipforgeError
from clipforge.cli.root import app, bench_app, friendly
from clipforge.cli.suites import method_list, require_suites
from clipforge.cli.caption import config_path
from clipforge.cli.core import TEMPLATES_HELP


@app.command("distill")
@friendly
def distill_cmd(config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (or the packaged name: distill)"),
                set_: List[str] = typer.Option([], "--set", "-s", help="override a field: section.field=value"),
                quiet: bool = typer.Option(False, help="no progress bars")):
    """Distil a multilingual student onto an English model's text tower from parallel en/zh text (AltCLIP stage 1)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clipforge.pipelines import distill as distill
    from clipforge.config import load_config
    cfg = load_config(config_path(config), set_, cls=distill.DistillConfig)
    r = distill.run(cfg, progress=not quiet)
    a = r["agreement_train"]
    typer.echo(f"student {r['student']} from {r['n_pairs']} parallel pairs: cos(student(en), teacher) "
               f"{a['cos_student_en']:.3f}, cos(student({cfg.data.language}), teacher(en)) {a['cos_student_other']:.3f}")
    typer.echo(f"bilingual model saved to {cfg.out}/model ({r['seconds']:.0f} s); stage 2: clipforge train -c bilingual-train")


@app.command("zeroshot")
@friendly
def zeroshot_cmd(model: Path = typer.Argument(..., help="a saved clipforge model directory"),
                 data: str = typer.Option(..., help="folder:<dir> (one sub-folder per class, '_' read as a space), "
                                                    "cifar10:<dir>, cifar100:<dir> (python-pickle format) or fashion-mnist"),
                 lang: str = typer.Option("en", help="which class names of a dataset: en, zh, or both (a folder's "
                                                     "names are its sub-folder names)"),
                 labels: Optional[str] = typer.Option(None, help="comma-separated class names to use instead (label order)"),
                 templates: Optional[str] = typer.Option(None, help=TEMPLATES_HELP),
                 split: str = typer.Option("test", help="train or test (CIFAR, Fashion-MNIST)"),
                 per_class: Optional[int] = typer.Option(None, help="at most N images per class (quick runs)"),
                 out: Optional[Path] = typer.Option(None, help="write CLIP_benchmark-style JSON here")):
    """Zero-shot classification as CLIP_benchmark runs it: class names x templates, acc1 / acc5 / mean per-class recall.

    With one language the JSON has ``metrics.acc1``, ``metrics.acc5`` and ``metrics.mean_per_class_recall``
    (with fewer than 5 classes acc5 is 1: every class is in the top 5); with ``--lang both`` ``metrics.en`` and
    ``metrics.zh`` each hold them. Images of a folder that do not decode are skipped and listed under ``skipped``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import time

    require_suites()

    from benchmarks.env import environment
    from clipforge.data.cifar import load_zeroshot_source
    from clipforge.data.prompts import language_of, parse_templates, split_labels, template_set
    from clipforge.data.templates_zh import CLASS_NAMES_ZH
    from clipforge.evaluate.zeroshot import evaluate_zeroshot
    from clipforge.model.dual_encoder import DualEncoder
    langs = ["en", "zh"] if lang == "both" else [lang]
    if any(lg not in ("en", "zh") for lg in langs):
        raise ClipforgeError(f"--lang must be en, zh or both, not {lang!r}")
    tmpl = parse_templates(templates)
    t0 = time.time()
    ds = load_zeroshot_source(data, split).per_class(per_class)
    given = split_labels(labels) if labels else None
    if given is not None and len(given) != len(ds.class_names):
        raise ClipforgeError(f"--labels has {len(given)} names but the data has {len(ds.class_names)} classes")
    if given is None and "zh" in langs and ds.name not in CLASS_NAMES_ZH:
        raise ClipforgeError(f"--lang zh: no Chinese class names for '{data}'; give them with --labels "
                             "(in label order) or name the class folders in Chinese and use --lang en")
    m = DualEncoder.from_pretrained(model)
    emb, y, skipped = _embed_zeroshot_images(m, ds)
    result = {"dataset": data, "model": str(model), "task": "zeroshot_classification", "split": split,
              "n_images": int(len(y)), "metrics": {}}
    for lg in langs:
        names = given or (list(ds.class_names) if lg == "en" else list(CLASS_NAMES_ZH[ds.name]))
        r = evaluate_zeroshot(m, None, y, names, tmpl, image_emb=emb)
        if "acc5" not in r:
            r["acc5"] = 1.0
        used = tmpl if tmpl is not None else {lg2: template_set(lg2) for lg2 in sorted({language_of(n) for n in names})}
        used = next(iter(used.values())) if isinstance(used, dict) and len(used) == 1 else used
        result["metrics"][lg] = {**r, "class_names": names, "templates": used}
        typer.echo(f"{lg}: acc1 {r['acc1']:.3f}  acc5 {r['acc5']:.3f}  mean per-class recall "
                   f"{r['mean_per_class_recall']:.3f}  ({len(y)} images, {len(names)} classes)")
    if len(langs) == 1:  # CLIP_benchmark's layout: the metrics of the one language at the top
        one = result["metrics"].pop(langs[0])
        result["language"] = langs[0]
        result["class_names"], result["templates"] = one.pop("class_names"), one.pop("templates")
        result["metrics"] = one
    if skipped:
        result["skipped"] = [{"item": i, "reason": why} for i, why in skipped]
        typer.echo(f"  skipped {len(skipped)} file(s) that do not decode, e.g. {skipped[0][0]}: {skipped[0][1]}"
                   + (" (all listed under 'skipped' in the JSON)" if out else ""))
    result["wall_seconds"] = round(time.time() - t0, 1)
    result["env"] = environment()
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
        typer.echo(f"wrote {out}")


def _embed_zeroshot_images(m, ds):
    """(embeddings, labels, skipped) of a zero-shot set: an array set in one go; files decoded in a thread pool,
    a file that does not decode skipped with its reason (never fatal unless none decodes)."""
    import numpy as np
    import torch

    from clipforge.embed.cache import embed_images
    if isinstance(ds.images, np.ndarray):
        return m.encode_image(ds.images), np.asarray(ds.labels), []
    got = embed_images(m.image_tower, ds.images, progress=False)
    if not len(got.kept):
        first = f"; e.g. {got.skipped[0][0]}: {got.skipped[0][1]}" if got.skipped else ""
        raise ClipforgeError(f"--data {ds.name}: no image decodes ({len(got.skipped)} files skipped{first})")
    was_training = m.training
    m.eval()
    try:
        with torch.inference_mode():
            emb = m.embed_image_features(torch.from_numpy(got.features)).float().numpy()
    finally:
        m.train(was_training)
    return emb, np.asarray(ds.labels)[got.kept], list(got.skipped)


@app.command("export")
@friendly
def export_cmd(model: Path = typer.Argument(..., help="a saved clipforge model directory"),
               format: str = typer.Option("sentence-transformers", "--format", "-f", help="sentence-transformers (text side) or onnx (both sides)"),
               out: Path = typer.Option(..., help="output folder")):
    """Export a model: its text side as a sentence-transformers folder, or both sides as ONNX (checked on ONNX Runtime)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clipforge.model.export import to_onnx, to_sentence_transformers
    from clipforge.model.dual_encoder import DualEncoder
    m = DualEncoder.from_pretrained(model)
    if format in ("sentence-transformers", "st"):
        to_sentence_transformers(m, out)
        typer.echo(f"wrote {out}: SentenceTransformer('{out}').encode(texts) gives this model's text embeddings")
    elif format == "onnx":
        manifest = to_onnx(m, out)
        d = manifest["max_abs_diff"]
        typer.echo(f"wrote {out}/image.onnx and {out}/text.onnx (ONNX Runtime vs PyTorch max abs diff: "
                   f"image {d['image']:.1e}, text {d['text']:.1e})")
    else:
        raise ClipforgeError(f"--format must be sentence-transformers or onnx, not {format!r}")


@bench_app.command("tux-retrieval-zh")
@friendly
def bench_tux_zh(out: Path = typer.Option(Path("benchmarks/results"), help="output folder"),
                 set_: List[str] = typer.Option([], "--set", "-s", help="override a field of every method's config"),
                 methods: str = typer.Option("all", help="comma-separated methods"),
                 folds: str = typer.Option("0,1,2,3,4", help="comma-separated folds"),
                 inner: bool = typer.Option(False, help="validate on a quarter of each fold's TRAINING folds (model selection)")):
    """Tux Paint 5-fold retrieval with zh_CN captions beside English (MR_en, MR_zh), every method side by side."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_suites()
    from benchmarks.bilingual import run_tux_retrieval_zh
    path = run_tux_retrieval_zh(out, method_list(methods, "TUX_ZH_ALL"), list(set_),
                                [int(f) for f in folds.split(",") if f.strip()], inner=inner)
    typer.echo(f"wrote {path}")


@bench_app.command("fashion-zsl-zh")
@friendly
def bench_fashion_zh(out: Path = typer.Option(Path("benchmarks/results"), help="output folder"),
                     set_: List[str] = typer.Option([], "--set", "-s", help="override a field of every method's config"),
                     methods: str = typer.Option("clipforge,use-m3,minilm-english", help="comma-separated methods"),
                     splits: str = typer.Option("0,1,2,3,4", help="comma-separated split seeds")):
    """Fashion-MNIST zero-shot (the docs/benchmarks.md splits) with Chinese class names beside English."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_suites()
    from benchmarks.bilingual import run_fashion_zsl_zh
    path = run_fashion_zsl_zh(out, method_list(methods, None), list(set_),
                              [int(s) for s in splits.split(",") if s.strip()])
    typer.echo(f"wrote {path}")
