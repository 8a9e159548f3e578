"""clipforge: forge a CLIP from a pretrained image tower and a pretrained text tower, on a CPU.

Library API (the CLI is a thin layer over these):
    from clipforge import DualEncoder, ZeroShotClassifier, load_config
    from clipforge.pipelines import classes as align
    zero_shot_classifier(model, class_names, templates=None): the classifier of `clipforge classify` and the service
open_clip-style (code written for open_clip, CLIP_benchmark among it, runs a clipforge model unchanged):
    from clipforge import create_model_and_transforms, get_tokenizer
"""
__version__ = "0.1.0"

from clipforge.pipelines import classes as align
from clipforge.config import RunConfig, load_config
from clipforge.errors import ClipforgeError, ConfigError
from clipforge.evaluate.zeroshot import ZeroShotClassifier, zero_shot_classifier
from clipforge.model.factory import create_model_and_transforms, get_tokenizer
from clipforge.model.dual_encoder import DualEncoder

__all__ = ["DualEncoder", "ZeroShotClassifier", "RunConfig", "load_config", "align", "ClipforgeError", "ConfigError",
           "create_model_and_transforms", "get_tokenizer", "zero_shot_classifier"]
