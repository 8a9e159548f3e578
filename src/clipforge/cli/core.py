"""Core commands: align a classification dataset, classify images, the Fashion-MNIST benchmark."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from clipforge.errors import ClipforgeError
from clipforge.cli.root import app, bench_app, friendly
from clipforge.cli.suites import method_list, require_suites


@app.command()
@friendly
def align(config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML/JSON config file"),
          set_: List[str] = typer.Option([], "--set", "-s", help="override a field: section.field=value"),
          resume: bool = typer.Option(False, help="continue from the last checkpoint in out/checkpoints"),
          quiet: bool = typer.Option(False, help="no progress bars")):
    """Align the towers on the seen classes, classify the unseen ones zero-shot, save the model."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clipforge.pipelines import classes as align_mod
    from clipforge.config import RunConfig, load_config
    cfg = load_config(config, set_, cls=RunConfig)
    result = align_mod.run(cfg, progress=not quiet, resume=resume)
    typer.echo(f"\nclipforge zero-shot on {result['dataset']} ({result['model']})")
    typer.echo(result["table"])
    if result["n_skipped"]:
        typer.echo(f"  skipped items: {result['n_skipped']} (see {cfg.out}/skipped.json)")
    typer.echo(f"  model saved to {cfg.out}/model; results in {cfg.out}/results.json "
               f"({result['seconds']['total']:.0f} s)")


TEMPLATES_HELP = ("prompt templates with {} for the class name: a file with one template per line, or an inline "
                  "list separated by '|' (or ',' when there is no '|'). Default: each label's language (Chinese "
                  "labels the Chinese set, others English)")


@app.command()
@friendly
def classify(model: Path = typer.Argument(..., help="a saved clipforge model directory"),
             images: List[Path] = typer.Argument(..., help="image files"),
             labels: str = typer.Option(..., help="class names separated by commas (also ';', newlines, '，', '、')"),
             templates: Optional[str] = typer.Option(None, help=TEMPLATES_HELP),
             top: int = typer.Option(3)):
    """Zero-shot classify images against your own labels (the same classifier as the web service's)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clipforge.data.images import load_image
    from clipforge.data.prompts import parse_templates, split_labels
    from clipforge.evaluate.zeroshot import zero_shot_classifier
    from clipforge.model.dual_encoder import DualEncoder
    names = split_labels(labels)
    if not names:
        raise ClipforgeError("--labels needs at least one class name, e.g. --labels 'cat,dog'")
    tmpl = parse_templates(templates)
    m = DualEncoder.from_pretrained(model)
    zs = zero_shot_classifier(m, names, tmpl)
    for path in images:
        img, reason = load_image(path)
        if img is None:
            typer.echo(json.dumps({"image": str(path), "error": reason}))
            continue
        typer.echo(json.dumps({"image": str(path), "top": zs.classify(m.encode_image([img]), k=top)[0]}, ensure_ascii=False))


@bench_app.command("fashion-zsl")
@friendly
def bench_fashion_zsl(out: Path = typer.Option(Path("benchmarks/results"), help="output folder"),
                      set_: List[str] = typer.Option([], "--set", "-s", help="override a field of the default config"),
                      methods: str = typer.Option("all", help="comma-separated methods")):
    """The Fashion-MNIST protocol of docs/benchmarks.md: 5 seen/unseen splits, every method side by side."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_suites()
    from benchmarks.fashion_zsl import run_fashion_zsl
    path = run_fashion_zsl(out, method_list(methods, "FASHION_ALL"), list(set_))
    typer.echo(f"wrote {path}")

