"""Retrieval evaluation of a caption model: final embeddings of a split, R@1/5/10 both ways and MR, examples for
the report; and the eval stage (a saved model on the held-out fold).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from clipforge.embed.cache import EmbeddingCache
from clipforge.evaluate.retrieval import retrieval_metrics, top_k
from clipforge.model.dual_encoder import DualEncoder
from clipforge.pipelines.caption_data import Side, images_of, load_sources, side_of, split_indices


@torch.inference_mode()
def embedside_of(model: DualEncoder, side: Side, cached_img: bool) -> tuple[np.ndarray, np.ndarray]:
    """Final (bridged) embeddings of a split's images and captions."""
    model.eval()
    if cached_img:
        img = model.embed_image_features(torch.as_tensor(side.images)).numpy()
    else:
        img = model.encode_image(side.images)
    if side.text_feats is not None:
        txt = model.embed_text_features(torch.as_tensor(side.text_feats)).numpy()
    else:
        txt = model.encode_text(side.texts)
    return img, txt


def examples(side: Side, img: np.ndarray, txt: np.ndarray, score, n: int = 8, k: int = 5) -> list[dict]:
    """Query -> top-k results in both directions, hits marked (the report's example grids)."""
    out = []
    pick = np.linspace(0, len(side.texts) - 1, num=min(n, len(side.texts))).astype(int)
    idx, val = top_k(txt[pick], img, k, score)
    for q, row, vals in zip(pick, idx, val):
        out.append({"direction": "text_to_image", "query": side.texts[q],
                    "top": [{"image": str(side.ds.paths[j]), "score": float(v), "hit": bool(j == side.owners[q])}
                            for j, v in zip(row, vals)]})
    pick = np.linspace(0, len(side.ds) - 1, num=min(n, len(side.ds))).astype(int)
    idx, val = top_k(img[pick], txt, k, score)
    for q, row, vals in zip(pick, idx, val):
        out.append({"direction": "image_to_text", "query": {"image": str(side.ds.paths[q])},
                    "top": [{"text": side.texts[j], "score": float(v), "hit": bool(side.owners[j] == q)}
                            for j, v in zip(row, vals)]})
    return out


def evaluate(model: DualEncoder, side: Side, cached_img: bool, n_examples: int = 8) -> tuple[dict, list[dict]]:
    img, txt = embedside_of(model, side, cached_img)

    def score(a, b):
        return model.logits(a, b)

    metrics = retrieval_metrics(img, txt, side.owners, score)
    metrics.update(n_images=len(side.ds), n_texts=len(side.texts))
    return metrics, examples(side, img, txt, score, n_examples)


def evaluate_saved(cfg) -> dict:
    """Eval stage: a saved model on the held-out fold (or the whole source when ``data.fold`` is null)."""
    model = DualEncoder.from_pretrained(cfg.model)
    saved = json.loads((Path(cfg.model) / "config.json").read_text())
    cached = not saved.get("image_tower_trained", False)  # a fine-tuned tower must not reuse pretrained features
    cache = EmbeddingCache(cfg.cache_dir)
    full, images = images_of(load_sources(cfg.data.source, cfg.data.caption_field), model.image_tower, cached, cache,
                              model.image_tower.input_size, progress=False)
    if cfg.data.fold is None:
        idx = np.arange(len(full))
    else:
        _, idx = split_indices(full, cfg)
    side = side_of(full, images, idx, cfg.data.language)
    metrics, ex = evaluate(model, side, cached, cfg.examples)
    result = {"dataset": cfg.data.source, "language": cfg.data.language, "fold": cfg.data.fold, "model": cfg.model,
              "task": "zeroshot_retrieval", "metrics": metrics, "examples": ex,
              "skipped": [{"item": i, "reason": r} for i, r in full.skipped.items]}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return result
