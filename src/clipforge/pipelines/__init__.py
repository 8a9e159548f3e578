"""Recipes, each a thin config + run(cfg): classes (zero-shot from a class dataset, the main job), captions (CLIP / SigLIP / LiT), scratch (MNIST), distill (bilingual)."""
