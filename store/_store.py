"""The Store: create, open, add, delete, compact, get, stats, verify.

A store is a directory (FORMAT.md section 4). Writers hold an exclusive lock;
readers see the generation the manifest named when they opened, and hold a
lease on it (store/_leases.py) so no writer collects the files it names.

`Store` is the facade: it checks arguments and reads; the commits are
store/_writer.py's (add, delete, compact) over store/_commit.py (the lock, the commit
point, roll-back, garbage collection), the first add's codec state is
store/_training.py's, and stats/verify are store/_report.py's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import _drift, _report, _writer
from .codecs import Codec, ensure_trained
from ._commit import PROJECTION_DIR, acquire_lock, collect_garbage, manifest_files
from ._create import new_store
from ._deletes import read_deletes
from ._errors import CorruptStoreError, StoreError
from ._ingest import DocSource, InMemorySource, open_source
from ._keywords import Keywords
from ._leases import Lease
from ._manifest import Manifest, read_manifest
from ._metadata import SCHEMA_KEY, MetadataColumns
from ._payloads import check_payloads, gather_payloads
from ._pooling import check_requested_factor, pooled
from ._projection import project, read_projection
from ._report import VerifyReport
from ._safefs import StorePath
from ._segment import SegmentReader
from ._structure import read_checked_codec
from ._training import CodecState, train_codec_state


class Store:
    """A lodestore store directory. Create with Store.create, open with Store.open."""

    def __init__(self, root: Path, manifest: Manifest, *, writable: bool, lock_fd: int | None = None,
                 lease: Lease | None = None):
        self.root = root
        self.manifest = manifest
        self.writable = writable
        self._lock_fd = lock_fd
        self._lease = lease  # a reader's claim on its generation (a writer holds the lock instead)
        self._closed = False
        self._codec: Codec | None = None
        self._projection: np.ndarray | None = None
        self._segments: list[SegmentReader] | None = None
        self._deleted: list[np.ndarray] = []
        self._id_map: dict[str, tuple[int, int]] | None = None
        self._load_deletes()  # now, not on first use: a later writer may collect superseded bitmaps

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike, dim: int = 128, nbits: int | None = None, *,
               codec: str | None = None, pq_subspaces: int | None = None,
               num_centroids: int | None = None, seed: int = 0, encoder: dict[str, Any] | None = None,
               input_dim: int | None = None, reduction: str = "pca", pool_factor: int = 1) -> "Store":
        """Create an empty store at `path` (which must not exist or be an empty directory).

        codec: "scalar" (centroid + `nbits` 1/2/4 bits per dimension, default 2) or
        "pq" (centroid + `pq_subspaces` 16/32/64/96/128 bytes, one per residual subspace;
        default: the most that fit in dim/4 bytes). None: "scalar" when nbits is
        given, "pq" when pq_subspaces is, else the default: "pq" where it fits in dim/4 bytes
        (dim >= 64), "scalar" below (store/codecs/__init__.py says why).
        `encoder`: the identity of the encoder whose vectors this store will hold
        (recorded in the manifest; the Index refuses text through another encoder).
        `input_dim` > `dim`: documents and queries arrive with input_dim values and
        are projected to dim by a `reduction` ("pca" or "random") fitted at the
        first add and kept with the codec state (store/_projection.py).
        `pool_factor` f > 1: every document added is stored as its first token plus about
        1/f of the others, cluster means of them (token pooling, store/_pooling.py);
        recorded in the manifest and applied to every later add. 1: stored as given.
        """
        root, manifest, lock_fd = new_store(Path(path), dim, nbits, codec=codec, pq_subspaces=pq_subspaces,
                                            num_centroids=num_centroids, seed=seed, encoder=encoder,
                                            input_dim=input_dim, reduction=reduction, pool_factor=pool_factor)
        return cls(root, manifest, writable=True, lock_fd=lock_fd)

    @classmethod
    def open(cls, path: str | os.PathLike, *, writable: bool = False) -> "Store":
        """Open an existing store; read-only unless writable=True (which takes the writer lock)."""
        root = Path(path)
        if not root.is_dir():
            raise StoreError(f"{root}: no such store directory")
        lock_fd = acquire_lock(root) if writable else None
        lease = None
        try:
            if not writable:
                lease = Lease.acquire(root)  # visible before the manifest is read (store/_leases.py)
            manifest = read_manifest(root)
            if lease is not None:
                lease.stamp(manifest.generation, manifest_files(manifest))
            if writable:
                manifest.check_writable()
                collect_garbage(root, manifest)
            return cls(root, manifest, writable=writable, lock_fd=lock_fd, lease=lease)  # loads the deletion bitmaps
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            if lease is not None:
                lease.release()
            raise

    def close(self) -> None:
        self._closed = True
        for seg in self._segments or []:
            seg.close()
        self._segments = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._lease is not None:
            self._lease.release()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.manifest
        return f"Store({str(self.root)!r}, generation={m.generation}, documents={m.documents}, tokens={m.tokens})"

    # ------------------------------------------------------------------ reader API (used by engine)
    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def nbits(self) -> int:
        return self.manifest.nbits

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def input_dim(self) -> int:
        """Dimension of the vectors the store is given (larger than dim when it reduces them)."""
        return int(self.manifest.settings.get("input_dim") or self.manifest.dim)

    @property
    def pool_factor(self) -> int:
        """The token pool factor every add applies to documents (1: none; FORMAT.md 7.7)."""
        return int(self.manifest.settings.get("pool_factor", 1))

    @property
    def projection(self) -> np.ndarray | None:
        """The (input_dim, dim) reduction matrix, or None (StoreError if not fitted yet)."""
        if self.input_dim == self.dim:
            return None
        if self._projection is None:
            if self.manifest.codec is None:
                raise StoreError(f"{self.root}: the reduction is fitted at the first add; nothing was added yet")
            self._projection = read_projection(StorePath(self.root) / PROJECTION_DIR, self.input_dim, self.dim)
        return self._projection

    def project(self, x: np.ndarray) -> np.ndarray:
        """Vectors given to the store (input_dim) as the store holds them (dim, unit norm)."""
        matrix = self.projection
        return x if matrix is None else project(x, matrix)

    @property
    def codec(self) -> Codec:
        """The trained codec, a ScalarCodec or PQCodec (StoreError if nothing was added yet)."""
        entry = self.manifest.codec
        if self._codec is None and entry is not None:
            self._codec = read_checked_codec(self.root, entry, nbits=self.nbits, dim=self.dim)
        return ensure_trained(self._codec)

    @property
    def segments(self) -> list[SegmentReader]:
        """Readers of the committed segments, in manifest order."""
        if self._segments is None:
            self._segments = self.open_segments()
        return self._segments

    def open_segments(self) -> list[SegmentReader]:
        """New readers of this generation's segments, owned (and closed) by the caller.

        For a long-lived reader such as a Searcher: the store's own readers are
        closed and replaced when this handle commits.
        """
        fields = self.metadata_fields or None
        return [SegmentReader.open_entry(self.root, s, self.manifest.codec, fields) for s in self.manifest.segments]

    @property
    def metadata_fields(self) -> dict[str, str]:
        """The metadata fields documents of this store have, {name: type} (int, float, bool, str, tags)."""
        return dict(self.manifest.settings.get(SCHEMA_KEY) or {})

    def get_metadata(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The typed metadata of live documents, one dict of their non-null fields each ({} for none)."""
        if isinstance(ids, str):
            raise ValueError("ids must be a list of strings, not one string")
        index = self._live_index(ids)
        return [self.segments[si].metadata().rows([local])[0] for si, local in (index[i] for i in ids)]

    def lease(self) -> Lease:
        """A new lease on this handle's generation for a long-lived reader (a Searcher's corpus): no writer
        removes the files it names while held, even after this handle moves on; release() it when done.
        Safe at any time: this handle's own lease (or writer lock) covers the generation until it is visible."""
        if self._closed:
            raise StoreError("store handle is closed: open the store again to read it")
        if not self.writable and not self._lease.held:
            return Lease(None, None, self.generation)  # read-only media: no writer to protect against
        lease = Lease.acquire(self.root)
        lease.stamp(self.generation, manifest_files(self.manifest))
        return lease

    def deleted(self, i: int) -> np.ndarray:
        """Boolean deletion mask of segment i (all False when it has no deletions)."""
        return self._deleted[i]

    def _load_deletes(self) -> None:
        self._deleted = [read_deletes(self.root, e) for e in self.manifest.segments]

    def _ids_index(self) -> dict[str, tuple[int, int]]:
        """Map external id -> (segment number, local doc) over live documents."""
        if self._id_map is None:
            m: dict[str, tuple[int, int]] = {}
            for si, seg in enumerate(self.segments):
                dead = self.deleted(si)
                for local, doc_id in enumerate(seg.ids()):
                    if not dead[local]:
                        m[doc_id] = (si, local)
            self._id_map = m
        return self._id_map

    def _live_index(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """The id map, after checking every one of `ids` is live (KeyError naming up to five that are not)."""
        index = self._ids_index()
        missing = [i for i in ids if i not in index]
        if missing:
            raise KeyError(f"no documents with ids {missing[:5]}{' ...' if len(missing) > 5 else ''} in the store")
        return index

    def ids(self) -> list[str]:
        """Every live document id, in store order."""
        return list(self._ids_index())

    def __len__(self) -> int:
        return self.manifest.documents

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._ids_index()

    def get(self, doc_id: str) -> np.ndarray:
        """The decompressed (n_tokens, dim) float32 token matrix of one document."""
        try:
            si, local = self._ids_index()[doc_id]
        except KeyError:
            raise KeyError(f"no document with id {doc_id!r} in the store") from None
        codes, residuals, _, _ = self.segments[si].read_docs(np.array([local]))
        try:
            return self.codec.decode(codes, residuals)
        except IndexError as e:  # a code >= K (CRC-correct but forged rows): the numpy decode's error
            raise CorruptStoreError(f"{self.segments[si].codes.path}: document {doc_id!r}: {e}") from None

    def payloads(self, ids: Sequence[str]) -> list[bytes | None]:
        """The payload bytes stored with each live document (None for one added without)."""
        index = self._live_index(ids)
        return gather_payloads(self.segments, [index[i] for i in ids])

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if self.writable and self._lock_fd is None:  # closed: it no longer holds the writer lock
            raise StoreError("store handle is closed: open the store again (writable=True) to change it")
        if not self.writable:
            raise StoreError("store opened read-only: use Store.open(path, writable=True) to change it")

    def add(self, ids: Sequence[str], embeddings: Sequence[Any], *, payloads: Sequence[bytes] | None = None,
            metadata: Sequence[dict[str, Any]] | None = None, keywords: Keywords | None = None, upsert: bool = False,
            progress: bool = False, pool_factor: int | None = None) -> int:
        """Add documents in one commit; trains the codec on the first add. Returns the new generation.

        Embeddings: one (n_tokens, dim) float16/32/64 numpy array or torch tensor per
        document; rows are L2-normalized on the way in. Payloads: optional bytes per
        document kept beside it (the Index keeps its text there). On bad input a
        ValueError names the document and nothing is written. An id that is live in
        the store is an error unless upsert=True, which deletes the old document in
        the same commit (a deleted id may always be added again). Metadata: optional dict per
        document of typed fields (int, float, str, bool, None, list of str; store/_metadata.py),
        written in the same commit; a field keeps one type across the store.
        Keywords: optional keyword postings of the documents (`Keywords.from_terms(tokenizer, terms per
        document)`; the store never tokenizes), written in the same commit (FORMAT.md 8.6).
        Documents are pooled at the store's pool_factor; a `pool_factor` given here must be that one.
        """
        self._require_writable()
        check_requested_factor(pool_factor, self.pool_factor, self.root)
        source = InMemorySource(ids, embeddings, self.input_dim, None if upsert else set(self._ids_index()), payloads)
        self._attach_metadata(source, metadata)
        _attach_keywords(source, keywords)
        return self.add_source(source, upsert=upsert, progress=progress)

    def _attach_metadata(self, source: DocSource, metadata: Sequence[dict[str, Any]] | None) -> None:
        """Check `metadata` against the source and the store's field types (ValueError, nothing written)."""
        if metadata is not None:
            source.metadata, source.metadata_schema = MetadataColumns.from_dicts(
                metadata, source.n_docs, self.metadata_fields, source.ids())

    def add_embeddings(self, path: str | os.PathLike, *, ids: Sequence[str] | None = None,
                       payloads: Sequence[bytes] | None = None, metadata: Sequence[dict[str, Any]] | None = None,
                       keywords: Keywords | None = None, upsert: bool = False, progress: bool = True,
                       pool_factor: int | None = None) -> int:
        """Add an embedding bundle (docs.npy + doclens.npy [+ ids.txt]) or a directory of .npy files.

        ids (instead of the bundle's ids.txt), payloads (optional bytes per document),
        metadata (optional dict per document) and keywords (as for add) are in the bundle's document order.
        pool_factor: as in add.
        """
        self._require_writable()
        check_requested_factor(pool_factor, self.pool_factor, self.root)
        source = open_source(path, self.input_dim, None if upsert else set(self._ids_index()), ids)
        source.payloads = check_payloads(payloads, source.n_docs)
        self._attach_metadata(source, metadata)
        _attach_keywords(source, keywords)
        return self.add_source(source, upsert=upsert, progress=progress)

    def add_source(self, source: DocSource, *, upsert: bool = False, progress: bool = False,
                   pool_factor: int | None = None) -> int:
        """Encode a document source into one new segment and commit it (FORMAT.md section 12).

        With upsert=True, live documents with the source's ids are deleted by the same commit.
        Its documents are pooled at the store's pool_factor (a PooledSource is taken as pooled).
        """
        self._require_writable()
        check_requested_factor(pool_factor, self.pool_factor, self.root)
        if source.dim != self.input_dim:
            raise ValueError(f"source has dim {source.dim}, the store takes dim {self.input_dim}")
        index = self._ids_index()
        replaced = [i for i in source.ids() if i in index]
        if replaced and not upsert:
            raise ValueError(f"document id {replaced[0]!r} is already in the store "
                             f"({len(replaced)} such ids); pass upsert=True to replace them")
        source = pooled(source, self.pool_factor, self.root)
        return _writer.add_source(self, source, replaced, progress=progress)

    def _drift_threshold(self) -> float | None:
        """The residual-norm threshold recorded at the first add; None for stores written before it was."""
        if self.manifest.codec is None:
            return None
        return _drift.codec_threshold(StorePath(self.root) / self.manifest.codec.path)

    def delete(self, ids: Sequence[str]) -> int:
        """Mark documents deleted in one commit (new bitmap files; segments are never edited).

        Every id must be live: an unknown (or already deleted) id raises KeyError and nothing changes.
        """
        self._require_writable()
        if isinstance(ids, str):
            raise ValueError("ids must be a list of strings, not one string")
        index = self._ids_index()
        ids = list(dict.fromkeys(ids))
        if not ids:
            return self.manifest.generation  # nothing to delete: no new generation
        missing = [i for i in ids if i not in index]
        if missing:
            raise KeyError(f"cannot delete unknown document ids: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                           " (nothing was deleted)")
        return _writer.delete(self, ids)

    def compact(self) -> int:
        """Merge every segment into one without the deleted documents, in one commit. Returns the generation.

        Rows are copied as stored (no decode/re-encode: lossless, codec-agnostic);
        document order and content are unchanged. Nothing to do (at most one segment and
        no deletions) commits nothing and returns the current generation. The old files
        are removed once the new manifest is durable and no reader holds a lease on an
        older generation (otherwise by a later commit or writable open).
        """
        self._require_writable()
        m = self.manifest
        if len(m.segments) <= 1 and not any(e.deleted for e in m.segments):
            return m.generation
        return _writer.compact(self)

    # ------------------------------------------------------------------ a codec shared by several stores
    def train_codec(self, source: DocSource) -> CodecState:
        """Fit this store's codec state (reduction, codec, drift threshold) on `source`, committing nothing.

        As the first add would fit it, with this store's settings; for adopt_codec in other stores.
        """
        return train_codec_state(self.manifest.settings, dim=self.dim, input_dim=self.input_dim,
                                 nbits=self.nbits, source=source)

    def codec_state(self) -> CodecState:
        """The committed codec state (StoreError if nothing was added or adopted yet)."""
        return CodecState(self.projection, self.codec, self._drift_threshold())

    def adopt_codec(self, state: CodecState) -> int:
        """Commit `state` (from train_codec or another store's codec_state) as this store's codec, before
        any add, so several stores encode every token identically. Returns the new generation."""
        self._require_writable()
        return _writer.adopt_codec(self, state)

    def _segments_reset(self) -> None:
        for seg in self._segments or []:
            seg.close()
        self._segments = self._id_map = None
        self._load_deletes()

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, Any]:
        """Sizes and parameters: documents, tokens, segments, bytes on disk, bytes per token, per-array sizes."""
        return _report.stats(self)

    def verify(self) -> VerifyReport:
        """Check every checksum in the store: manifest body, codec, every chunk of every segment, bitmaps."""
        return _report.verify(self)


def _attach_keywords(source: DocSource, keywords: Keywords | None) -> None:
    """Check that `keywords` are postings of the source's documents (ValueError, nothing written)."""
    if keywords is None:
        return
    if not isinstance(keywords, Keywords):
        raise ValueError(f"keywords must be lodestore.store.Keywords (Keywords.from_terms(tokenizer, terms per "
                         f"document)), not {type(keywords).__name__}")
    if keywords.n != source.n_docs:
        raise ValueError(f"got keyword postings of {keywords.n} documents for {source.n_docs} documents")
    source.keywords = keywords
