"""EncoderConfig: every setting that changes the vectors, and the layout of an exported encoder.

A store records ``EncoderConfig.to_dict()`` in its manifest (FORMAT.md section 5.1,
``encoder.config``), so the dict's keys and values are part of a store's encoder
identity: renaming or re-typing a field makes existing stores refuse the encoder.

Schema versions: version 1 names special tokens by id, for bert-base-uncased
vocabularies. Version 2 (``lodestore convert-model``) adds fields that speak in what
ColBERT checkpoints store: prefix strings and special-token strings, resolved to ids
through the tokenizer, and whether the model attends to query expansion tokens. A
config that leaves every version-2 field at its default is written exactly as
version 1 was (no ``version`` key), so stores recorded before version 2 still match.
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
QUERY_ONLY_FIELDS = ("query_marker_id", "query_length", "mask_query_padding", "query_prefix",
                     "attend_to_expansion_tokens")

#: The newest schema this code reads, and the one it writes when a version-2 field is set.
CONFIG_VERSION = 2
#: Special tokens: the string field (version 2) that, when set, replaces the id field (version 1).
TOKEN_FIELDS = {
    "query_prefix": "query_marker_id",
    "document_prefix": "doc_marker_id",
    "cls_token": "cls_token_id",
    "sep_token": "sep_token_id",
    "mask_token": "mask_token_id",
    "pad_token": "pad_token_id",
}
#: Version-2 fields and their defaults (the version-1 behaviour): left out of to_dict at these values.
V2_DEFAULTS: dict[str, Any] = {**dict.fromkeys(TOKEN_FIELDS), "attend_to_expansion_tokens": True}


@dataclass(frozen=True)
class EncoderConfig:
    """How texts become token sequences and how model outputs become vectors.

    Stored as ``encoder.json`` beside an exported model and recorded by stores,
    so every field that changes the vectors lives here. The defaults fit
    bert-base-uncased vocabularies (the default model among them).

    Special tokens are named by id (``*_id``) or, in version 2, by string
    (``query_prefix``, ``cls_token``, ...): a string, when given, wins and its id
    field becomes None; the Framer resolves it through the tokenizer. An empty
    prefix means no marker at all (the sequence is ``[CLS] tokens [SEP]``).
    """

    query_marker_id: int | None = 1  # [unused0], ColBERT's [Q]
    doc_marker_id: int | None = 2  # [unused1], ColBERT's [D]
    query_length: int = 32
    #: Pad queries with [MASK] tokens (ColBERT query augmentation), attended unless
    #: attend_to_expansion_tokens is off, their output rows kept as query vectors;
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
    cls_token_id: int | None = 101
    sep_token_id: int | None = 102
    mask_token_id: int | None = 103
    pad_token_id: int | None = 0
    # -- version 2 --------------------------------------------------------------
    #: Marker strings as the checkpoint stores them (PyLate's "[Q] ", Stanford's "[unused0]"); "" = none.
    query_prefix: str | None = None
    document_prefix: str | None = None
    #: Special tokens as the tokenizer names them ("[CLS]", "<s>", ...).
    cls_token: str | None = None
    sep_token: str | None = None
    mask_token: str | None = None
    pad_token: str | None = None
    #: With mask_query_padding on: whether the model attends to the [MASK] padding (query
    #: expansion tokens). Off (ColBERT's and PyLate's default): the padding is fed with attention
    #: mask 0, yet its output rows are kept as query vectors.
    attend_to_expansion_tokens: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "skiplist", tuple(self.skiplist))
        for name, id_name in TOKEN_FIELDS.items():
            token = getattr(self, name)
            if token is not None:
                if not isinstance(token, str):
                    raise ValueError(f"{name} must be a string, got {token!r}")
                if token == "" and name not in ("query_prefix", "document_prefix"):
                    raise ValueError(f"{name} must not be empty")
                object.__setattr__(self, id_name, None)  # the string names the token
            elif getattr(self, id_name) is None:
                raise ValueError(f"give {id_name} or {name}")
            elif not isinstance(getattr(self, id_name), int) or isinstance(getattr(self, id_name), bool):
                raise ValueError(f"{id_name} must be an integer token id, got {getattr(self, id_name)!r}")
        if not 4 <= self.query_length <= MAX_POSITIONS:
            raise ValueError(f"query_length must be in [4, {MAX_POSITIONS}], got {self.query_length}")
        if not 4 <= self.doc_max_length <= MAX_POSITIONS:
            raise ValueError(f"doc_max_length must be in [4, {MAX_POSITIONS}], got {self.doc_max_length}")
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")
        for entry in self.skiplist:
            if not isinstance(entry, (int, str)) or isinstance(entry, bool):
                raise ValueError(f"skiplist entries must be token ids or strings, got {entry!r}")

    @property
    def version(self) -> int:
        """1 when every version-2 field is at its default (written as version 1 was), else 2."""
        return 2 if any(getattr(self, k) != v for k, v in V2_DEFAULTS.items()) else 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the skiplist as a list, so it survives a JSON round trip unchanged).

        Version-2 fields at their defaults and id fields replaced by a string are left out,
        so a version-1 config gives exactly the dict stores recorded before version 2.
        """
        out = asdict(self)
        out["skiplist"] = list(self.skiplist)
        for name, default in V2_DEFAULTS.items():
            if out[name] == default:
                del out[name]
        for name, id_name in TOKEN_FIELDS.items():
            if name in out:
                del out[id_name]
        if self.version > 1:
            out["version"] = self.version
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Build from a dict such as ``encoder.json``; missing fields take defaults, unknown ones are refused.

        ``version`` (absent: 1) must be one this code reads.
        """
        data = dict(data)
        version = data.pop("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= CONFIG_VERSION:
            raise ValueError(f"encoder config version {version!r} is not one this lodestore reads "
                             f"(1 to {CONFIG_VERSION}); upgrade lodestore")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown encoder config field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
