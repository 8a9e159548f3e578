"""Image-text retrieval recall, both directions, with several captions per image.

Names say the direction (CLIP_benchmark's ``image_retrieval_recall@k`` means text->image, which confuses
people): ``image_to_text_R@k`` asks "for each image, is ANY of its captions in the top k texts?";
``text_to_image_R@k`` asks "for each caption, is its image in the top k images?". ``MR`` is the mean of the
six recalls (k = 1, 5, 10).

Memory: scores are computed for a chunk of queries at a time and reduced to one rank per query, so
100k x 100k never exists at once. A query's rank is the number of candidates that score strictly higher
than its best correct candidate (ties go to the query, as identical captions cannot be told apart).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from clipforge.util.testhooks import pause_point

KS = (1, 5, 10)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b.T


@torch.inference_mode()
def ranks_image_to_text(image_emb, text_emb, text_owner, score: Callable = _dot, chunk: int = 1024) -> np.ndarray:
    """For each image, the rank of its best caption among all texts."""
    img, txt = torch.as_tensor(image_emb, dtype=torch.float32), torch.as_tensor(text_emb, dtype=torch.float32)
    owner = torch.as_tensor(np.asarray(text_owner), dtype=torch.long)
    out = []
    for s in range(0, len(img), chunk):
        sims = score(img[s:s + chunk], txt).float()  # (c, T)
        mine = owner[None, :] == torch.arange(s, s + len(sims))[:, None]
        best = sims.masked_fill(~mine, -torch.inf).max(1).values
        out.append((sims > best[:, None]).sum(1))
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


@torch.inference_mode()
def ranks_text_to_image(image_emb, text_emb, text_owner, score: Callable = _dot, chunk: int = 1024) -> np.ndarray:
    """For each caption, the rank of its image among all images."""
    img, txt = torch.as_tensor(image_emb, dtype=torch.float32), torch.as_tensor(text_emb, dtype=torch.float32)
    owner = torch.as_tensor(np.asarray(text_owner), dtype=torch.long)
    out = []
    for s in range(0, len(txt), chunk):
        sims = score(img, txt[s:s + chunk]).float().T  # (c, I)
        own = sims.gather(1, owner[s:s + chunk, None])
        out.append((sims > own).sum(1))
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def retrieval_metrics(image_emb, text_emb, text_owner, score: Callable = _dot, ks=KS, chunk: int = 1024) -> dict:
    """R@k both ways and MR. ``text_owner[j]`` is the index of the image that caption j describes."""
    text_owner = np.asarray(text_owner)
    if len(text_owner) != len(text_emb):
        raise ValueError(f"text_owner has {len(text_owner)} entries for {len(text_emb)} texts")
    if len(text_owner) and (text_owner.min() < 0 or text_owner.max() >= len(image_emb)):
        raise ValueError("text_owner must index into the images")
    pause_point("evaluation")  # test hook (tests/test_crash.py)
    if len(text_owner) == 0:  # no caption to rank (an empty split): zeros, as for an empty split of images
        r_i2t, r_t2i = np.zeros(len(image_emb), np.int64), np.zeros(0, np.int64)  # no image has a caption
    else:
        r_i2t = ranks_image_to_text(image_emb, text_emb, text_owner, score, chunk)
        r_t2i = ranks_text_to_image(image_emb, text_emb, text_owner, score, chunk)
    has_caption = np.isin(np.arange(len(image_emb)), text_owner)
    r_i2t = r_i2t[has_caption]
    m = {}
    for k in ks:
        m[f"image_to_text_R@{k}"] = float((r_i2t < k).mean()) if len(r_i2t) else 0.0
    for k in ks:
        m[f"text_to_image_R@{k}"] = float((r_t2i < k).mean()) if len(r_t2i) else 0.0
    m["MR"] = float(np.mean([m[f"{d}_R@{k}"] for d in ("image_to_text", "text_to_image") for k in ks]))
    m["image_to_text_median_rank"] = float(np.median(r_i2t) + 1) if len(r_i2t) else 0.0
    m["text_to_image_median_rank"] = float(np.median(r_t2i) + 1) if len(r_t2i) else 0.0
    return m


@torch.inference_mode()
def top_k(query_emb, cand_emb, k: int = 5, score: Callable = _dot) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` best candidates per query (for example grids)."""
    sims = score(torch.as_tensor(query_emb), torch.as_tensor(cand_emb)).float()
    v, i = sims.topk(min(k, sims.shape[1]), dim=1)
    return i.numpy(), v.numpy()
