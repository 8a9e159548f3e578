"""Tower ids -> towers. Ids read like the ecosystem: pkg:..., hf:..., st:..., scratch:..."""
from __future__ import annotations

from clipforge.errors import ClipforgeError
from clipforge.towers.base import Tower
from clipforge.towers.student import SCHEME, StudentTextTower

PACKAGED_IMAGE = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
PACKAGED_TEXT = ("all-MiniLM-L6-v2", "use-m3", "e5-small", "e5-small-query", "all-mpnet-base-v2")
MULTILINGUAL_TEXT = ("use-m3", "e5-small", "e5-small-query")  # frozen numpy/C encoders (towers/multilingual.py)


def _check_local_dir(spec: str, name: str, modality: str) -> None:
    """``hf:/some/dir`` names a local directory (a Hub id never starts with '/', '.' or '~'): say that it is
    missing, instead of the Hub's message about an invalid repo id."""
    from pathlib import Path
    if not name.startswith(("/", ".", "~")):
        return
    path = Path(name).expanduser()
    if not path.is_dir():
        what = "is a file, not a model directory" if path.exists() else "does not exist"
        raise ClipforgeError(f"{modality} tower '{spec}': the local directory '{path}' {what} "
                             f"(towers.{modality} takes a Hub id such as org/name, or an existing model directory)")


def build_tower(spec: str, modality: str, image_size: int | None = None, invert: bool = False,
                config: dict | None = None) -> Tower:
    """Build the tower named by ``spec`` for ``modality`` ('image' or 'text').

    ``config`` is a tower's own saved ``tower_config()`` (from-scratch towers: architecture, vocabulary).
    """
    scheme, _, name = spec.partition(":")
    if not name:
        raise ClipforgeError(f"tower id '{spec}' needs a scheme: pkg:, hf:, st: or scratch: (e.g. pkg:efficientnet-lite0)")
    if scheme in ("hf", "st"):
        _check_local_dir(spec, name, modality)
    if modality == "image":
        if scheme == "pkg" and name in PACKAGED_IMAGE:
            from clipforge.towers.efficientnet import EfficientNetLiteTower
            return EfficientNetLiteTower(name, image_size=image_size, invert=invert)
        if scheme == "hf":
            from clipforge.towers.hf_image import HFImageTower
            return HFImageTower(name, image_size=image_size, invert=invert)
        if scheme == "scratch":
            from clipforge.towers.scratch import ScratchCNNTower
            return ScratchCNNTower(name, image_size=image_size, invert=invert, config=config)
        raise ClipforgeError(f"unknown image tower '{spec}'; packaged: {['pkg:' + n for n in PACKAGED_IMAGE]}, "
                             "or hf:<hub id or local dir>, scratch:cnn-small")
    if scheme == "distill":  # a distilled student (distill.py): base tower + learned projection, from its saved config
        return _build_student(spec, config)
    if scheme == "pkg" and name in MULTILINGUAL_TEXT:
        from clipforge.towers.multilingual import build_multilingual
        return build_multilingual(name)
    if scheme == "pkg" and name == "all-mpnet-base-v2":  # five PyPI parts, joined once (towers/mpnet.py)
        from clipforge.towers.mpnet import build_mpnet
        return build_mpnet(spec)
    if scheme == "pkg" and name in PACKAGED_TEXT:
        from clipforge.towers.text import HFTextTower, packaged_minilm
        return HFTextTower(packaged_minilm(), tower_id=spec)
    if scheme == "hf":
        from clipforge.towers.text import HFTextTower
        return HFTextTower(name)
    if scheme == "st":
        from clipforge.towers.text import STTextTower
        return STTextTower(name)
    if scheme == "scratch":
        from clipforge.towers.scratch import ScratchTextTower
        return ScratchTextTower(name, config=config)
    raise ClipforgeError(f"unknown text tower '{spec}'; packaged: {['pkg:' + n for n in PACKAGED_TEXT]}, "
                         "hf:<hub id or local dir>, st:<sentence-transformers id or dir>, or scratch:text-small")


def _build_student(spec: str, config: dict | None) -> StudentTextTower:
    """``distill:<base id>`` + its saved tower_config -> an (untrained) student; weights come from the model file."""
    base_id = spec[len(SCHEME):]
    if config is None:
        raise ClipforgeError(f"text tower '{spec}' is a distilled student: it needs its saved tower_config "
                             "(load it with DualEncoder.from_pretrained from the folder that distill wrote)")
    if config.get("base") not in (None, base_id):
        raise ClipforgeError(f"student tower '{spec}' was saved with base '{config['base']}'")
    base = build_tower(base_id, "text")
    return StudentTextTower(base, config["dim"], config.get("kind", "mlp"), config.get("hidden", 1024),
                            config.get("dropout", 0.1))
