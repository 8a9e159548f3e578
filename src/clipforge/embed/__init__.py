"""Embeddings computed once: the content-keyed on-disk cache (cache.py) and the fast image backends (fast.py)."""
