"""Image-caption commands: the train and eval stages (YAML configs, like the seed's), and the Tux Paint benchmark."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from clipforge.cli.root import app, bench_app, friendly
from clipforge.cli.suites import method_list, require_suites

def config_path(path: Optional[Path]) -> Optional[Path]:
    """A file, or the name of a packaged config (``caption-train``, ``siglip``, ``lit-text``...)."""
    from clipforge.config import config_path
    return config_path(path)


@app.command("train")
@friendly
def train_cmd(config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (or a packaged name: caption-train, siglip, lit-text)"),
              set_: List[str] = typer.Option([], "--set", "-s", help="override a field: section.field=value"),
              resume: bool = typer.Option(False, help="continue from out/checkpoints/last.pt"),
              quiet: bool = typer.Option(False, help="no progress bars")):
    """Align the towers on image-caption pairs (CLIP / SigLIP / LiT), then retrieval on the held-out fold."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clipforge.pipelines import captions as caption
    from clipforge.config import CaptionRunConfig, load_config
    cfg = load_config(config_path(config), set_, cls=CaptionRunConfig)
    result = caption.run(cfg, progress=not quiet, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    if "metrics" in result:
        m = result["metrics"]
        typer.echo("  ".join(f"{k} {m[k]:.3f}" for k in m if "R@" in k or k == "MR"))
    if result["n_skipped"]:
        typer.echo(f"skipped items: {result['n_skipped']} (see {cfg.out}/skipped.json)")
    typer.echo(f"model saved to {cfg.out}/model; results in {cfg.out}/results.json")


@app.command("eval")
@friendly
def eval_cmd(config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML eval config (or caption-eval)"),
             set_: List[str] = typer.Option([], "--set", "-s", help="override a field: section.field=value")):
    """Retrieval R@1/5/10 (image->text, text->image) and MR of a saved model."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clipforge.pipelines.caption_eval import evaluate_saved
    from clipforge.config import CaptionEvalConfig, load_config
    cfg = load_config(config_path(config), set_, cls=CaptionEvalConfig)
    result = evaluate_saved(cfg)
    typer.echo(json.dumps(result["metrics"], indent=1))
    typer.echo(f"wrote {cfg.out}")


@bench_app.command("tux-retrieval")
@friendly
def bench_tux(out: Path = typer.Option(Path("benchmarks/results"), help="output folder"),
              set_: List[str] = typer.Option([], "--set", "-s", help="override a field of every method's config"),
              methods: str = typer.Option("all",
                                         help="comma-separated methods")):
    """Tux Paint 5-fold image-caption retrieval, every method side by side (docs/benchmarks.md)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require_suites()
    from benchmarks.tux_retrieval import run_tux_retrieval
    path = run_tux_retrieval(out, method_list(methods, "TUX_ALL"), list(set_))
    typer.echo(f"wrote {path}")
