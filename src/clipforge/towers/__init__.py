"""Towers: one interface over packaged, Hugging Face, sentence-transformers and scratch encoders."""
from clipforge.towers.base import ImagePreprocess, Tower
from clipforge.towers.registry import build_tower

__all__ = ["Tower", "ImagePreprocess", "build_tower"]
