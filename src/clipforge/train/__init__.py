"""Training: the Trainer (trainer.py), code-free checkpoints (checkpoint.py) and torchrun support (distributed.py)."""
