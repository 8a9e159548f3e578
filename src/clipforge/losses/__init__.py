"""The objectives: pure loss functions (functional.py), the class-description objectives (classes.py) and the caption-contrastive objective (contrastive.py)."""
