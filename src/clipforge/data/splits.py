"""Seen/unseen class splits. The protocol of docs/benchmarks.md, so numbers stay comparable."""
from __future__ import annotations

import random


def protocol_unseen(n_classes: int, n_unseen: int, seed: int) -> list[int]:
    """Unseen class ids: ``sorted(random.Random(seed).sample(range(n_classes), n_unseen))``."""
    return sorted(random.Random(seed).sample(range(n_classes), n_unseen))


def seen_unseen(class_names: list[str], n_unseen: int = 3, seed: int = 0,
                unseen_names: list[str] | None = None) -> tuple[list[int], list[int]]:
    """(seen ids, unseen ids), from the protocol seed or from explicit unseen class names."""
    if unseen_names:
        missing = [n for n in unseen_names if n not in class_names]
        if missing:
            from clipforge.errors import ConfigError
            raise ConfigError(f"config field 'data.unseen': unknown classes {missing}; known: {class_names}")
        unseen = sorted(class_names.index(n) for n in unseen_names)
    else:
        if not 1 <= n_unseen < len(class_names):
            from clipforge.errors import ConfigError
            raise ConfigError(f"config field 'data.n_unseen': {n_unseen} unseen of {len(class_names)} classes leaves "
                              f"no class to train on; use 1 to {len(class_names) - 1}")
        unseen = protocol_unseen(len(class_names), n_unseen, seed)
    seen = [c for c in range(len(class_names)) if c not in unseen]
    if not seen:
        from clipforge.errors import ConfigError
        raise ConfigError(f"config field 'data.unseen': every one of the {len(class_names)} classes is unseen, so "
                          "there is no class to train on; leave at least one out of the list")
    return seen, unseen
