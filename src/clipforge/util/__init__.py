"""What every stage shares: optional extras (extras.py), cache paths (paths.py), file modes (files.py), crash-test hooks (testhooks.py)."""
