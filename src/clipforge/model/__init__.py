"""The model: DualEncoder (dual_encoder.py) = two towers + two heads + a similarity (heads.py, similarity.py); the open_clip-style factory and the exporters."""
