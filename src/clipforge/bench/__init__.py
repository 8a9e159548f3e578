"""Benchmarks: fixed protocols, every method side by side, CLIP_benchmark-style JSON."""
