"""The Index: text in, ranked documents (with their text) out.

An Index is a store whose manifest records the encoder that made its vectors,
and whose documents carry their title, text and metadata as payloads (UTF-8
JSON, FORMAT.md section 8.5). It ties together three parts that also work
alone: the Encoder (ONNX model + tokenizer), the Store, and the Searcher.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lodestore._staging import clean_staging, spill_dir
from lodestore.hybrid import DEFAULT_FUSION, DEFAULT_MODE, check_mode, depth, fuse
from lodestore.keyword import KeywordIndex, document_keywords
from lodestore.engine import Searcher
from lodestore.store import Keywords, MetadataColumns, Store, check_pool_factor
from lodestore.text import Encoder

#: Documents encoded per slice while adding: bounds the float32 vectors held in RAM.
ENCODE_SLICE = 256
#: Stored dimension of token vectors (None: the encoder's own). Chosen in docs/BENCHMARKS.md section 7.3.
DEFAULT_DIM: int | None = None
#: Token pool factor of a new index (1: every token vector stored). Chosen in docs/BENCHMARKS.md "Token pooling".
DEFAULT_POOL_FACTOR = 1


@dataclass(frozen=True)
class Hit:
    """One ranked document: its id, MaxSim score, and what was stored with it."""

    id: str
    score: float
    title: str = ""
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def snippet(self, words: int = 30) -> str:
        """The first `words` words of the text, with an ellipsis when cut."""
        parts = self.text.split()
        return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


class Index:
    """A text index: `Index.create(path)`, `add(ids, texts)`, `Index.open(path)`, `search("query")`."""

    def __init__(self, store: Store, encoder: Encoder, searcher_options: dict[str, Any]):
        self.store = store
        self.encoder = encoder
        self._searcher_options = searcher_options
        self._searcher: Searcher | None = None
        self._keyword: KeywordIndex | None = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike, encoder: Encoder | None = None, nbits: int | None = None, *,
               codec: str | None = None, pq_subspaces: int | None = None,
               dim: int | None = DEFAULT_DIM, reduction: str = "pca", num_centroids: int | None = None,
               seed: int = 0, pool_factor: int = DEFAULT_POOL_FACTOR, **searcher_options: Any) -> "Index":
        """Create an empty index at `path` for vectors from `encoder` (default: the packaged MiniLM).

        nbits / codec / pq_subspaces choose the residual codec as in Store.create
        (default: the store's default codec).
        dim: store token vectors reduced to this many dimensions by `reduction`
        ("pca" or "random", fitted at the first add; docs/BENCHMARKS.md section 7.3
        measured the choice); None or the encoder's dim keeps them whole.
        pool_factor: store each document as its first token plus ~1/pool_factor of the
        others, cluster means (token pooling, FORMAT.md 7.7; queries are never pooled);
        1 stores every token vector.
        """
        encoder = encoder or Encoder.default()
        dim = encoder.dim if dim is None or dim >= encoder.dim else int(dim)
        store = Store.create(path, dim=dim, nbits=nbits, codec=codec, pq_subspaces=pq_subspaces,
                             num_centroids=num_centroids, seed=seed,
                             encoder=encoder.identity(), input_dim=encoder.dim, reduction=reduction,
                             pool_factor=pool_factor)
        return cls(store, encoder, searcher_options)

    @classmethod
    def open(cls, path: str | os.PathLike, encoder: Encoder | None = None, *, writable: bool = False,
             **searcher_options: Any) -> "Index":
        """Open an index; `encoder` must be the one it was built with (default: rebuilt from the record).

        searcher_options go to the Searcher (memory_budget, nprobe, ndocs, prefetch, ...).
        """
        store = Store.open(path, writable=writable)
        try:
            if writable:  # the lock is ours: any spill in staging/ is a dead writer's leftover
                clean_staging(store.root)
            recorded = store.manifest.encoder
            if not recorded:
                raise ValueError(f"{store.root}: this store records no encoder (its vectors were added directly); "
                                 "search it with lodestore.Searcher and your own query vectors")
            encoder = encoder or _encoder_from_record(recorded, store.root)
            _check_encoder(encoder, recorded, store.root)
        except BaseException:
            store.close()
            raise
        return cls(store, encoder, searcher_options)

    def close(self) -> None:
        if self._searcher is not None:
            self._searcher.close()
            self._searcher = None
        self._keyword = None
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        return f"Index({str(self.store.root)!r}, documents={len(self.store)}, generation={self.store.generation})"

    # ------------------------------------------------------------------ writing
    def add(self, ids: Sequence[str], texts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None, *,
            titles: Sequence[str] | None = None, batch_size: int = 32, upsert: bool = False,
            progress: bool = False, pool_factor: int | None = None) -> int:
        """Encode and add documents in one commit; returns the new generation.

        An id already in the index is an error unless upsert=True, which replaces
        that document in the same commit.
        The encoder sees "title. text" when a title is given. Title, text and
        metadata are stored and returned with hits; metadata values must be of the
        store's metadata types (int, float, str, bool, None, list of str), and are also
        kept as typed columns that `search(where=...)` filters on (Store.add).
        Vectors are spilled to a float16 file in the store's ``staging/`` folder
        (lodestore/_staging.py) while encoding, so memory stays bounded by one
        slice of documents; the spill is removed when the commit is done or fails.
        Documents are pooled at the index's pool factor; a `pool_factor` given here
        must be that one (ValueError before anything is encoded).
        """
        ids, texts, titles, metadata = _check_documents(ids, texts, titles, metadata)
        self._check_pool_factor(pool_factor)
        if not upsert:
            self._check_new(ids)
        typed = self._check_metadata(ids, metadata)
        keywords = document_keywords(titles, texts)
        with spill_dir(self.store) as spill:
            _encode_to_bundle(self.encoder, [f"{t}. {x}" if t else x for t, x in zip(titles, texts)], spill,
                              batch_size, progress)
            return self._commit(spill, ids, document_payloads(texts, titles, metadata), typed, keywords, upsert,
                                progress)

    def add_encoded(self, bundle: str | os.PathLike, ids: Sequence[str], texts: Sequence[str],
                    metadata: Sequence[dict[str, Any]] | None = None, *, titles: Sequence[str] | None = None,
                    progress: bool = False, pool_factor: int | None = None) -> int:
        """Add documents already encoded into an embedding bundle (tools/encode_collection) by this encoder.

        The bundle's bundle.json must record this encoder's identity (settings
        that only shape queries may differ) and its documents must be `ids` in
        order; the stored result is the same as
        `add` gives (which spills the same float16 vectors), without encoding twice.
        pool_factor: as in add.
        """
        ids, texts, titles, metadata = _check_documents(ids, texts, titles, metadata)
        self._check_pool_factor(pool_factor)
        bundle = Path(bundle)
        try:
            info = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{bundle}: no readable bundle.json recording the encoder ({e})") from None
        _check_encoder(self.encoder, info.get("encoder") or {}, bundle, documents_only=True)
        if (bundle / "ids.txt").exists() and (bundle / "ids.txt").read_text(encoding="utf-8").splitlines() != ids:
            raise ValueError(f"{bundle}: its documents (ids.txt) are not the given ids in the same order")
        self._check_new(ids)
        typed = self._check_metadata(ids, metadata)
        keywords = document_keywords(titles, texts)
        return self._commit(bundle, ids, document_payloads(texts, titles, metadata), typed, keywords, False, progress)

    def _check_pool_factor(self, pool_factor: int | None) -> None:
        if pool_factor is not None and check_pool_factor(pool_factor) != self.store.pool_factor:
            raise ValueError(f"{self.store.root}: this index pools documents with pool_factor="
                             f"{self.store.pool_factor} (set when it was created), not {pool_factor}; "
                             "build a new index to change it (nothing was added)")

    def _check_new(self, ids: list[str]) -> None:
        known = [i for i in ids if i in self.store]
        if known:
            raise ValueError(f"document id {known[0]!r} is already in the index")

    def _check_metadata(self, ids: list[str], metadata: list[dict]) -> list[dict] | None:
        """Store.add's typed-metadata checks (ValueError) before anything is encoded; None when no document has any."""
        if not any(metadata):
            return None
        MetadataColumns.from_dicts(metadata, len(ids), self.store.metadata_fields, ids)
        return metadata

    def _commit(self, bundle: Path, ids: list[str], payloads: list[bytes], metadata: list[dict] | None,
                keywords: Keywords, upsert: bool, progress: bool) -> int:
        """One commit: the vectors of `bundle`, with the text payloads, metadata and keyword postings."""
        generation = self.store.add_embeddings(bundle, ids=ids, payloads=payloads, metadata=metadata,
                                               keywords=keywords, upsert=upsert, progress=progress)
        if self._searcher is not None:  # it answers from the generation it opened: reopen on next search
            self._searcher.close()
            self._searcher = None
        return generation

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents in one commit (see Store.delete)."""
        generation = self.store.delete(ids)
        if self._searcher is not None:
            self._searcher.close()
            self._searcher = None
        return generation

    # ------------------------------------------------------------------ reading
    @property
    def searcher(self) -> Searcher:
        """The Searcher over the current generation (opened on first use)."""
        if self._searcher is None:
            self._searcher = Searcher(self.store, **self._searcher_options)
        return self._searcher

    @property
    def keyword(self) -> KeywordIndex:
        """The BM25 index over the stored text (lodestore/keyword.py), brought to the current generation."""
        if self._keyword is None or self._keyword.store is not self.store:
            self._keyword = KeywordIndex(self.store)
        self._keyword.refresh()
        return self._keyword

    def search(self, query: str | Sequence[str], k: int = 10, subset: Sequence[str] | None = None, *,
               mode: str = DEFAULT_MODE, fusion: str = DEFAULT_FUSION, where: str | None = None,
               params: Sequence[Any] | None = None) -> list[Hit] | list[list[Hit]]:
        """Top-k hits for one query string, or one list per query for a list of strings.

        mode: "maxsim" (the token vectors), "bm25" (keywords of the stored title and
        text) or "hybrid" (both, fused by `fusion`: "rrf" or "score"; lodestore/hybrid.py). The default,
        hybrid with score fusion, ranked best on every collection measured (BENCHMARKS 11.3).
        A hit's score is the mode's: MaxSim, BM25, or the fused score.
        where/params: only documents whose metadata match, in every mode, e.g.
        where="year >= ? AND lang = ?", params=(2019, "en") (checked before the queries are encoded).
        """
        check_mode(mode, fusion)
        single = isinstance(query, str)
        queries = [query] if single else list(query)
        if not queries:
            raise ValueError("no queries given")
        self.searcher.filter.compile(where, params)  # a bad filter fails before any encoding
        raw = self.ranked(queries, k, subset=subset, mode=mode, fusion=fusion, where=where, params=params)
        results = [self._hits(r) for r in raw]
        return results[0] if single else results

    def ranked(self, queries: list[str], k: int, *, subset: Sequence[str] | None = None, mode: str = DEFAULT_MODE,
               fusion: str = DEFAULT_FUSION, vectors: Sequence[np.ndarray] | None = None, where: str | None = None,
               params: Sequence[Any] | None = None) -> list[list[tuple[str, float]]]:
        """Raw (id, score) lists of `mode` for query texts (`vectors`: their encodings, if already made);
        where/params filter every mode (keywords through the ids the filter matches)."""
        check_mode(mode, fusion)
        n = depth(mode, k)
        maxsim = keyword = None
        if mode != "bm25":
            vectors = self.query_vectors(queries) if vectors is None else list(vectors)
            maxsim = self.searcher.search(vectors, k=n, subset=subset, where=where, params=params)
        if mode != "maxsim":
            if subset is not None and isinstance(subset, (str, bytes)):
                raise ValueError("subset must be a collection of document ids, not one string")
            allowed = None if subset is None else set(subset)
            if where is not None:
                matching = set(self.searcher.matching_ids(where, params))
                allowed = matching if allowed is None else allowed & matching
            keyword = self.keyword.search(queries, k=n, allowed=allowed)
        if mode == "maxsim":
            return maxsim
        if mode == "bm25":
            return keyword
        return [fuse([m, w], k, fusion) for m, w in zip(maxsim, keyword)]

    def query_vectors(self, queries: list[str]) -> list[np.ndarray]:
        """Encoded queries without their [PAD] rows (zero vectors: they add 0 to every MaxSim
        score, but would probe arbitrary centroids), one (q_len_i, dim) matrix each."""
        return [v[np.any(v != 0, axis=1)] for v in self.encoder.encode_queries(queries)]

    def search_vectors(self, vectors: Sequence[np.ndarray], k: int = 10) -> list[list[tuple[str, float]]]:
        """Search already-encoded queries (a list of (q_len_i, dim) or a (B, q_len, dim) array): raw (id, score) lists."""
        return self.searcher.search(list(vectors), k=k)

    def documents(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Stored title, text and metadata of documents (empty fields for ones stored without)."""
        return [_decode_payload(p) for p in self.store.payloads(list(ids))]

    def _hits(self, raw: list[tuple[str, float]]) -> list[Hit]:
        docs = self.documents([doc_id for doc_id, _ in raw])
        return [Hit(doc_id, float(score), d["title"], d["text"], d["metadata"]) for (doc_id, score), d in zip(raw, docs)]


def document_payloads(texts: list[str], titles: list[str], metadata: list[dict]) -> list[bytes]:
    """What is stored with each document (FORMAT.md 8.5): UTF-8 JSON title, text, metadata."""
    return [json.dumps({"title": t, "text": x, "metadata": m}, ensure_ascii=False).encode("utf-8")
            for t, x, m in zip(titles, texts, metadata)]


def _decode_payload(data: bytes | None) -> dict[str, Any]:
    if not data:  # None: added without a payload; b"": compacted together with documents that had one
        return {"title": "", "text": "", "metadata": {}}
    d = json.loads(data)
    return {"title": d.get("title") or "", "text": d.get("text") or "", "metadata": d.get("metadata") or {}}


def _check_documents(ids: Sequence[Any], texts: Sequence[Any], titles: Sequence[Any] | None,
                     metadata: Sequence[Any] | None) -> tuple[list[str], list[str], list[str], list[dict]]:
    """Clear ValueErrors for what Index.add cannot take; nothing is encoded before these pass."""
    for name, value in (("ids", ids), ("texts", texts), ("titles", titles), ("metadata", metadata)):
        if isinstance(value, (str, bytes, dict)):
            raise ValueError(f"{name} must be a list, not one {type(value).__name__}")
    ids, texts = list(ids), list(texts)
    if not ids:
        raise ValueError("nothing to add: no documents")
    if len(ids) != len(texts):
        raise ValueError(f"got {len(ids)} ids for {len(texts)} texts")
    titles = [""] * len(ids) if titles is None else list(titles)
    metadata = [{}] * len(ids) if metadata is None else list(metadata)
    if len(titles) != len(ids) or len(metadata) != len(ids):
        raise ValueError(f"got {len(titles)} titles and {len(metadata)} metadata entries for {len(ids)} documents")
    seen: set[str] = set()
    for i, (doc_id, text, title, meta) in enumerate(zip(ids, texts, titles, metadata)):
        if not isinstance(doc_id, str) or not doc_id:
            raise ValueError(f"document {i}: id {doc_id!r} is not a non-empty string")
        if doc_id in seen:
            raise ValueError(f"duplicate document id {doc_id!r}")
        seen.add(doc_id)
        if not isinstance(text, str) or not text or text.isspace():  # no copy of a long text
            raise ValueError(f"document {doc_id!r}: text is empty or not a string ({type(text).__name__})")
        if not isinstance(title, str):
            raise ValueError(f"document {doc_id!r}: title is {type(title).__name__}, not str")
        if not isinstance(meta, dict):
            raise ValueError(f"document {doc_id!r}: metadata is {type(meta).__name__}, not a dict")
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise ValueError(f"document {doc_id!r}: metadata is not JSON-serializable ({e})") from None
    return ids, texts, titles, metadata


def _encode_to_bundle(encoder: Encoder, texts: list[str], out: Path, batch_size: int,
                      progress: bool) -> None:
    """Encode texts slice by slice into an embedding bundle (float16 docs.npy, doclens.npy) at `out`."""
    from tqdm.auto import tqdm

    lens: list[int] = []
    truncated = 0
    with open(out / "docs.raw", "wb") as raw, tqdm(total=len(texts), desc="encoding", unit="doc",
                                                   disable=not progress) as bar:
        for start in range(0, len(texts), ENCODE_SLICE):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                vectors = encoder.encode_documents(texts[start : start + ENCODE_SLICE], batch_size=batch_size)
            truncated += sum(_truncated_count(w) for w in caught)
            for w in caught:
                if _truncated_count(w) == 0:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            for v in vectors:
                raw.write(v.astype(np.float16).tobytes())
                lens.append(len(v))
            bar.update(len(vectors))
    if truncated:
        warnings.warn(f"{truncated} document(s) truncated to doc_max_length={encoder.config.doc_max_length} tokens",
                      stacklevel=3)
    n_tokens = sum(lens)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
              "shape": (n_tokens, encoder.dim)}
    with open(out / "docs.npy", "wb") as f:  # header, then the raw rows: no second copy in RAM
        np.lib.format.write_array_header_1_0(f, header)
        with open(out / "docs.raw", "rb") as raw:
            shutil.copyfileobj(raw, f, 1 << 22)
    (out / "docs.raw").unlink()
    np.save(out / "doclens.npy", np.array(lens, dtype=np.int64))


def _truncated_count(w: warnings.WarningMessage) -> int:
    text = str(w.message)
    return int(text.split()[0]) if "truncated to doc_max_length" in text else 0


def _encoder_from_record(recorded: dict[str, Any], root: Path) -> Encoder:
    """The packaged encoder with the recorded config, if that is what built the store."""
    try:
        return Encoder.default(**recorded.get("config", {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{root}: cannot rebuild the recorded encoder ({e}); pass encoder=Encoder.from_dir(...) "
                         "(--encoder DIR on the command line)") from None


def _check_encoder(encoder: Encoder, recorded: dict[str, Any], root: Path, *, documents_only: bool = False) -> None:
    try:
        encoder.check_identity(recorded, documents_only=documents_only)
    except ValueError as e:
        raise ValueError(
            f"{root}: its vectors were made by a different encoder ({e}); mixing them with this encoder's "
            "vectors would give meaningless scores. Use the encoder it was made with, e.g. "
            "Index.open(path, encoder=Encoder.from_dir(MODEL_DIR)) (--encoder MODEL_DIR on the command line)"
        ) from None
