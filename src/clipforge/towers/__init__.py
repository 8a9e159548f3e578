"""Towers: one interface over packaged, Hugging Face, sentence-transformers and scratch encoders."""
from .base import ImagePreprocess, Tower
from .registry import build_tower

__all__ = ["Tower", "ImagePreprocess", "build_tower"]
