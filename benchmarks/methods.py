"""Named methods = config overrides on top of the default run config, so every suite can select them."""
from __future__ import annotations

from clipforge.errors import ConfigError

# The seed-* rows keep ``train.gzsl_epochs=null`` (calibration models as long as the method's own training) and no
# concept bridge (``bridge.alpha=0``): the settings they were measured with, before the default's calibration was
# shortened to 30 epochs and the default gained the bridge. They re-create the seed methods, which had neither.
METHODS: dict[str, list[str]] = {
    # The default: description sentences, multi-label sigmoid objective, 5-head linear ensemble.
    "clipforge": [],
    # Same objective with class names only (no descriptions): what the descriptions buy.
    "clipforge-names": ["data.descriptions=templates"],
    # The seed Pretrained_Model_Alignment: one right + one wrong description per image, L1 to +1/-1,
    # shared Siamese |a-b| MLP; one head, wrong descriptions from seen classes only.
    "seed-pair-siamese": ["loss.kind=pair", "loss.pair_variant=l1", "head.similarity=siamese",
                          "head.siamese_shared=true", "train.ensemble=1", "train.lr=1e-3", "train.epochs=300",
                          "train.batch_size=256", "train.gzsl_epochs=null", "bridge.alpha=0"],
    # The seed "Contrastive": image x caption InfoNCE over the batch (a caption = one random description of the
    # image's class; same-class captions are positives), fixed temperature 0.07, the two cross-entropies summed,
    # one linear head onto the text tower's output, no text projection.
    "seed-contrastive": ["loss.kind=batch-clip", "loss.reduction=sum", "head.init_temperature=0.07",
                         "head.learn_temperature=false", "head.init_bias=null", "train.ensemble=1", "train.lr=1e-3",
                         "train.epochs=300", "train.batch_size=256",
                         "train.gzsl_epochs=null", "bridge.alpha=0"],
    # The seed method's own recipe, which frozen-feature training could not run: the image tower's last block
    # fine-tuned together with the Siamese similarity, the similarity's learning rate below the tower's. Fewer
    # epochs than seed-pair-siamese: each step runs the tower's last block (pipelines/finetune.py).
    "seed-finetune-siamese": ["loss.kind=pair", "loss.pair_variant=l1", "head.similarity=siamese",
                              "head.siamese_shared=true", "train.ensemble=1", "train.lr=1e-3", "train.epochs=30",
                              "train.batch_size=256", "towers.unlock_image_last_n=1", "train.lr_image_tower=1e-4",
                              "train.lr_similarity=1e-5", "train.gzsl_epochs=null", "bridge.alpha=0"],
}


# Methods that run on the default config's features but are not a config of the trainer.
EXTRA = ("clipforge-transductive", "linear-probe", "conse", "procrustes", "least-squares", "asif", "csa")


def method_overrides(name: str) -> list[str]:
    if name in EXTRA:
        return []
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose from {sorted(METHODS) + list(EXTRA)}")
    return METHODS[name]
