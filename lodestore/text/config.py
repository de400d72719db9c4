"""EncoderConfig: every setting that changes the vectors, and the layout of an exported encoder.

A store records ``EncoderConfig.to_dict()`` in its manifest (FORMAT.md section 5.1,
``encoder.config``), so the dict's keys and values are part of a store's encoder
identity: renaming or re-typing a field makes existing stores refuse the encoder.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass, fields
from typing import Any

#: The files of an encoder directory (Encoder.from_dir).
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "encoder.json"
#: (hidden, dim) float matrix applied after the model when the model does not project itself.
PROJECTION_FILE = "projection.npy"

#: BERT's position table: no sequence may be longer.
MAX_POSITIONS = 512

#: EncoderConfig fields that change query vectors only, never document vectors.
QUERY_ONLY_FIELDS = ("query_marker_id", "query_length", "mask_query_padding")


@dataclass(frozen=True)
class EncoderConfig:
    """How texts become token sequences and how model outputs become vectors.

    Stored as ``encoder.json`` beside an exported model and recorded by stores,
    so every field that changes the vectors lives here. The defaults fit
    bert-base-uncased vocabularies (the default model among them).
    """

    query_marker_id: int = 1  # [unused0], ColBERT's [Q]
    doc_marker_id: int = 2  # [unused1], ColBERT's [D]
    query_length: int = 32
    #: Pad queries with attended [MASK] tokens (ColBERT query augmentation);
    #: off: pad with [PAD], not attended, and those rows of the output are zero.
    #: Off by default: the packaged model was not trained with query augmentation,
    #: and [MASK] padding cost it nDCG@10 on scifact and cranfield (docs/BENCHMARKS.md 7.3).
    #: Turn it on for ColBERT checkpoints.
    mask_query_padding: bool = False
    doc_max_length: int = 300
    #: Tokens dropped from document outputs: ids, or strings that are single tokens.
    skiplist: tuple[int | str, ...] = tuple(string.punctuation)
    dim: int = 384
    #: False: the model outputs hidden states and ``projection.npy`` maps them to ``dim``.
    projection_inside_model: bool = True
    normalize: bool = True
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "skiplist", tuple(self.skiplist))
        if not 4 <= self.query_length <= MAX_POSITIONS:
            raise ValueError(f"query_length must be in [4, {MAX_POSITIONS}], got {self.query_length}")
        if not 4 <= self.doc_max_length <= MAX_POSITIONS:
            raise ValueError(f"doc_max_length must be in [4, {MAX_POSITIONS}], got {self.doc_max_length}")
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")
        for entry in self.skiplist:
            if not isinstance(entry, (int, str)) or isinstance(entry, bool):
                raise ValueError(f"skiplist entries must be token ids or strings, got {entry!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the skiplist as a list, so it survives a JSON round trip unchanged)."""
        out = asdict(self)
        out["skiplist"] = list(self.skiplist)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Build from a dict such as ``encoder.json``; missing fields take defaults, unknown ones are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown encoder config field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
