"""The Store: create, open, add, delete, compact, get, stats, verify.

A store is a directory (FORMAT.md section 4). Writers hold an exclusive lock;
readers see the generation the manifest named when they opened, and hold a
lease on it (store/_leases.py) so no writer collects the files it names.
"""

from __future__ import annotations

import fcntl
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import _drift
from ._codec import ensure_trained, training_sample_size, default_num_centroids
from ._codec_io import verify_codec, write_codec
from ._codecs import (MANIFEST_KIND, Codec, creation_settings, reader_features, resolve_codec, settings_codec,
                      train_codec)
from ._compact import copy_documents, far_tokens_estimate
from ._pq import PQ_TRAINING_SAMPLE
from ._deletes import encode_deletes, read_deletes
from ._errors import CorruptStoreError, StoreError, StoreLockedError
from ._fs import failpoint, fsync_dir, fsync_tree, write_durable
from ._ingest import DocSource, InMemorySource, open_source
from ._leases import READERS_DIR, Lease, live_leases
from ._manifest import (DELETES_NAME, MANIFEST_NAME, SEGMENT_NAME, SPILL_NAME, CodecEntry, Manifest, SegmentEntry,
                        read_manifest, write_manifest)
from ._payloads import check_payloads
from ._projection import REDUCTIONS, fit_projection, project
from ._segment import SegmentReader, SegmentWriter, segment_disk_usage, write_small_array
from ._safefs import StorePath
from ._smallarray import read_attributes, read_small, verify_small
from ._structure import read_checked_codec

SEGMENTS_DIR = "segments"
CODEC_DIR = "codec"
PROJECTION_DIR = "projection"
LOCK_NAME = ".lock"


@dataclass
class VerifyReport:
    """What `Store.verify` checked: every chunk of every array, the manifest, the bitmaps."""

    checked: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        head = f"{self.checked} chunks checked, {len(self.failures)} failures"
        return "\n".join([head] + [f"  CORRUPT {f}" for f in self.failures])


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
               input_dim: int | None = None, reduction: str = "pca") -> "Store":
        """Create an empty store at `path` (which must not exist or be an empty directory).

        codec: "scalar" (centroid + `nbits` 1/2/4 bits per dimension, default 2) or
        "pq" (centroid + `pq_subspaces` 16/32/64 bytes, one per residual subspace;
        default: the most that fit in dim/4 bytes). None: "scalar" when nbits is
        given, "pq" when pq_subspaces is, else the default: "pq" where it fits in dim/4 bytes
        (dim >= 64), "scalar" below (store/_codecs.py says why).
        `encoder`: the identity of the encoder whose vectors this store will hold
        (recorded in the manifest; the Index refuses text through another encoder).
        `input_dim` > `dim`: documents and queries arrive with input_dim values and
        are projected to dim by a `reduction` ("pca" or "random") fitted at the
        first add and kept with the codec state (store/_projection.py).
        """
        codec, nbits, pq_subspaces = resolve_codec(dim, nbits, codec, pq_subspaces)
        if num_centroids is not None and not 1 <= num_centroids <= 65536:
            raise ValueError(f"num_centroids must be in [1, 65536], got {num_centroids}")
        settings: dict[str, Any] = {"num_centroids": num_centroids, "seed": int(seed)}
        if input_dim is not None and input_dim != dim:
            if not isinstance(input_dim, int) or input_dim < dim:
                raise ValueError(f"input_dim must be an integer larger than dim={dim}, got {input_dim!r}")
            if reduction not in REDUCTIONS:
                raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
            settings.update(input_dim=int(input_dim), reduction=reduction)
        root = Path(path)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise FileExistsError(f"{root}: exists and is not an empty directory; refusing to create a store there")
        root.mkdir(parents=True, exist_ok=True)
        (root / SEGMENTS_DIR).mkdir()
        lock_fd = _acquire_lock(root)
        manifest = Manifest(generation=0, dim=int(dim), nbits=int(nbits),
                            settings={**settings, **creation_settings(codec, pq_subspaces)}, encoder=encoder,
                            reader_features=reader_features(codec),
                            writer_features=("projection",) if "input_dim" in settings else ())
        write_manifest(root, manifest)
        fsync_dir(root.parent)
        return cls(root, manifest, writable=True, lock_fd=lock_fd)

    @classmethod
    def open(cls, path: str | os.PathLike, *, writable: bool = False) -> "Store":
        """Open an existing store; read-only unless writable=True (which takes the writer lock)."""
        root = Path(path)
        if not root.is_dir():
            raise StoreError(f"{root}: no such store directory")
        lock_fd = _acquire_lock(root) if writable else None
        lease = None
        try:
            if not writable:
                lease = Lease.acquire(root)  # visible before the manifest is read (store/_leases.py)
            manifest = read_manifest(root)
            if lease is not None:
                lease.stamp(manifest.generation, manifest_files(manifest))
            if writable:
                manifest.check_writable()
                _collect_garbage(root, manifest)
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
    def projection(self) -> np.ndarray | None:
        """The (input_dim, dim) reduction matrix, or None (StoreError if not fitted yet)."""
        if self.input_dim == self.dim:
            return None
        if self._projection is None:
            if self.manifest.codec is None:
                raise StoreError(f"{self.root}: the reduction is fitted at the first add; nothing was added yet")
            flat = read_small(StorePath(self.root) / PROJECTION_DIR / "matrix")
            if flat.size != self.input_dim * self.dim:
                raise StoreError(f"{self.root}/{PROJECTION_DIR}: matrix has {flat.size} values, expected {self.input_dim}x{self.dim}")
            self._projection = flat.reshape(self.input_dim, self.dim)
        return self._projection

    def project(self, x: np.ndarray) -> np.ndarray:
        """Vectors given to the store (input_dim) as the store holds them (dim, unit norm)."""
        matrix = self.projection
        return x if matrix is None else project(x, matrix)

    @property
    def codec(self) -> Codec:
        """The trained codec, ResidualCodec or PQCodec (StoreError if nothing was added yet)."""
        entry = self.manifest.codec
        if self._codec is None and entry is not None:
            self._codec = read_checked_codec(self.root, entry, nbits=self.nbits, dim=self.dim)
        return ensure_trained(self._codec)

    @property
    def segments(self) -> list[SegmentReader]:
        """Readers of the committed segments, in manifest order."""
        if self._segments is None:
            self._segments = [SegmentReader.open_entry(self.root, s, self.manifest.codec) for s in self.manifest.segments]
        return self._segments

    def open_segments(self) -> list[SegmentReader]:
        """New readers of this generation's segments, owned (and closed) by the caller.

        For a long-lived reader such as a Searcher: the store's own readers are
        closed and replaced when this handle commits.
        """
        return [SegmentReader.open_entry(self.root, s, self.manifest.codec) for s in self.manifest.segments]

    def lease(self) -> Lease:
        """A new lease on this handle's generation, for a long-lived reader of it (a Searcher's corpus).

        While it is held no writer removes the files this generation names, even after
        this handle moves on or closes; release() it when done. Safe to take at any
        time: this handle's own lease (or its writer lock) protects the generation
        until the new lease is visible.
        """
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
        except IndexError as e:  # a code >= K (CRC-correct but forged rows)
            raise CorruptStoreError(f"{self.segments[si].codes.path}: document {doc_id!r}: {e}") from None

    def payloads(self, ids: Sequence[str]) -> list[bytes | None]:
        """The payload bytes stored with each live document (None for one added without)."""
        index = self._ids_index()
        missing = [i for i in ids if i not in index]
        if missing:
            raise KeyError(f"no documents with ids {missing[:5]}{' ...' if len(missing) > 5 else ''} in the store")
        out: list[bytes | None] = [None] * len(ids)
        by_segment: dict[int, list[int]] = {}
        for pos, doc_id in enumerate(ids):
            by_segment.setdefault(index[doc_id][0], []).append(pos)
        for si, positions in by_segment.items():
            got = self.segments[si].payloads(np.array([index[ids[p]][1] for p in positions]))
            for p, data in zip(positions, got or [None] * len(positions)):
                out[p] = data
        return out

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if self.writable and self._lock_fd is None:  # closed: it no longer holds the writer lock
            raise StoreError("store handle is closed: open the store again (writable=True) to change it")
        if not self.writable:
            raise StoreError("store opened read-only: use Store.open(path, writable=True) to change it")

    def add(self, ids: Sequence[str], embeddings: Sequence[Any], *, payloads: Sequence[bytes] | None = None,
            upsert: bool = False, progress: bool = False) -> int:
        """Add documents in one commit; trains the codec on the first add. Returns the new generation.

        Embeddings: one (n_tokens, dim) float16/32/64 numpy array or torch tensor per
        document; rows are L2-normalized on the way in. Payloads: optional bytes per
        document kept beside it (the Index keeps its text there). On bad input a
        ValueError names the document and nothing is written. An id that is live in
        the store is an error unless upsert=True, which deletes the old document in
        the same commit (a deleted id may always be added again).
        """
        self._require_writable()
        source = InMemorySource(ids, embeddings, self.input_dim, None if upsert else set(self._ids_index()), payloads)
        return self.add_source(source, upsert=upsert, progress=progress)

    def add_embeddings(self, path: str | os.PathLike, *, ids: Sequence[str] | None = None,
                       payloads: Sequence[bytes] | None = None, upsert: bool = False, progress: bool = True) -> int:
        """Add an embedding bundle (docs.npy + doclens.npy [+ ids.txt]) or a directory of .npy files.

        ids (instead of the bundle's ids.txt) and payloads (optional bytes per
        document) are in the bundle's document order.
        """
        self._require_writable()
        source = open_source(path, self.input_dim, None if upsert else set(self._ids_index()), ids)
        source.payloads = check_payloads(payloads, source.n_docs)
        return self.add_source(source, upsert=upsert, progress=progress)

    def add_source(self, source: DocSource, *, upsert: bool = False, progress: bool = False) -> int:
        """Encode a document source into one new segment and commit it (FORMAT.md section 12).

        With upsert=True, live documents with the source's ids are deleted by the same commit.
        """
        self._require_writable()
        if source.dim != self.input_dim:
            raise ValueError(f"source has dim {source.dim}, the store takes dim {self.input_dim}")
        index = self._ids_index()
        replaced = [i for i in source.ids() if i in index]
        if replaced and not upsert:
            raise ValueError(f"document id {replaced[0]!r} is already in the store "
                             f"({len(replaced)} such ids); pass upsert=True to replace them")
        m = self.manifest
        new_codec = m.codec is None
        if new_codec:
            projection, codec, limit = self._train_codec(source)
        else:
            projection, codec, limit = self.projection, self.codec, self._drift_threshold()
        generation = m.generation + 1
        name = f"seg-{generation:06d}"
        seg_path = StorePath(self.root) / SEGMENTS_DIR / name
        codec_path = StorePath(self.root) / CODEC_DIR
        projection_path = StorePath(self.root) / PROJECTION_DIR
        written: list[str] = []
        made_dirs: list[StorePath] = []  # what this commit created, and only that, is removed if it fails
        try:
            if new_codec:
                if projection is not None:
                    projection_path.mkdir()  # a new real directory: never through a planted symlink
                    made_dirs.append(projection_path)
                    write_projection(projection_path, projection, self.manifest.settings["reduction"])
                codec_path.mkdir()
                made_dirs.append(codec_path)
                write_codec(codec_path, codec)
                if limit is not None:
                    _set_attributes(codec_path, {_drift.THRESHOLD_ATTR: limit})
                failpoint("add.codec_written")
            payloads = source.payloads
            writer = SegmentWriter(seg_path, codec, source.n_docs, source.n_tokens, payloads=payloads is not None)
            made_dirs.append(seg_path)  # made by the writer (a new directory, or it raised)
            bar = _progress(progress, source.n_tokens, f"encoding {name}")
            done = far = 0
            for batch_ids, doclens, tokens in source.batches():
                if projection is not None:
                    tokens = project(tokens, projection)
                codes, residuals = codec.encode(tokens)
                far += _drift.count_far(codec.centroids, tokens, codes, limit)
                part = None if payloads is None else payloads[done : done + len(batch_ids)]
                writer.append(batch_ids, doclens, codes, residuals, part)
                done += len(batch_ids)
                bar.update(len(tokens))
                failpoint("add.batch_written")
            bar.close()
            if limit is not None:
                writer.attrs[_drift.FAR_ATTR] = far
            writer.finish()
            failpoint("add.segment_written")
            fsync_tree(seg_path)
            if new_codec:
                fsync_tree(codec_path)
                if projection is not None:
                    fsync_tree(projection_path)
            entries = self._write_deletes(generation, replaced, written) if replaced else list(m.segments)
            fsync_dir(self.root / SEGMENTS_DIR)
            fsync_dir(self.root)
            failpoint("add.before_commit")
            entries.append(SegmentEntry(name=name, documents=source.n_docs, tokens=source.n_tokens))
            kind, pq_subspaces = settings_codec(m.settings)
            codec_entry = m.codec or CodecEntry(MANIFEST_KIND[kind], CODEC_DIR, self.dim, self.nbits,
                                                codec.num_centroids, pq_subspaces=pq_subspaces)
            self._commit(replace(m, generation=generation, codec=codec_entry, segments=tuple(entries)))
        except BaseException as e:
            if not self._committed(generation):  # not committed: leave no trace
                self._unlink_segment_files(written)
                for made in made_dirs:
                    made.remove_tree()
            self._note_failure(e, "add", generation)
            raise
        self._codec, self._projection = codec, projection
        return generation

    def _train_codec(self, source: DocSource) -> tuple[np.ndarray | None, Codec, float | None]:
        """(reduction matrix or None, codec, drift threshold), all fitted on token samples of the first add.

        The drift threshold (store/_drift.py) comes from up to 2^14 tokens k-means did not
        see, when the source has more tokens than the training sample; otherwise from the
        training sample itself (small first adds: later segments of the same data then
        read above 1%).
        """
        settings = self.manifest.settings
        kind, pq_subspaces = settings_codec(settings)
        k = settings.get("num_centroids") or default_num_centroids(source.n_tokens)
        seed = int(settings.get("seed", 0))
        n_train = training_sample_size(source.n_tokens, k)
        n_probe = min(_drift.THRESHOLD_SAMPLE, source.n_tokens - n_train)
        if n_probe > 0:
            both = source.sample(n_train + n_probe, seed)
            order = np.random.default_rng(seed + 1).permutation(len(both))  # bundle samples come in file order
            sample, probe = both[order[:n_train]], both[order[n_train:]]
        else:
            sample = source.sample(n_train, seed)
            probe = sample[np.random.default_rng(seed + 1).permutation(len(sample))[: _drift.THRESHOLD_SAMPLE]]
        # pq: its codebooks learn from a second draw (residuals of tokens k-means did not fit)
        residual_sample = source.sample(PQ_TRAINING_SAMPLE, seed + 1) if kind == "pq" else None
        projection = None
        if self.input_dim != self.dim:
            projection = fit_projection(settings["reduction"], sample, self.dim, seed)
            sample, probe = project(sample, projection), project(probe, projection)
            if residual_sample is not None:
                residual_sample = project(residual_sample, projection)
        codec = train_codec(sample, kind, nbits=self.nbits, pq_subspaces=pq_subspaces, num_centroids=k,
                            n_tokens=source.n_tokens, seed=seed, residual_sample=residual_sample)
        limit = _drift.threshold(codec.centroids, probe, codec.assign(probe)) if len(probe) else None
        if codec.num_centroids < k:
            warnings.warn(
                f"the first add has only {source.n_tokens} tokens: the codec gets {codec.num_centroids} centroids "
                f"instead of {k}, for the life of this store; add a representative first batch for better compression",
                stacklevel=3,
            )
        return projection, codec, limit

    def _drift_threshold(self) -> float | None:
        """The residual-norm threshold recorded at the first add; None for stores written before it was."""
        if self.manifest.codec is None:
            return None
        value = read_attributes(StorePath(self.root) / self.manifest.codec.path).get(_drift.THRESHOLD_ATTR)
        return float(value) if isinstance(value, (int, float)) else None

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
        m = self.manifest
        generation = m.generation + 1
        written: list[str] = []
        try:
            entries = self._write_deletes(generation, ids, written)
            fsync_dir(self.root / SEGMENTS_DIR)
            failpoint("delete.before_commit")
            self._commit(replace(m, generation=generation, segments=tuple(entries)))
        except BaseException as e:
            if not self._committed(generation):
                self._unlink_segment_files(written)
            self._note_failure(e, "delete", generation)
            raise
        return generation

    def _write_deletes(self, generation: int, ids: list[str], written: list[str]) -> list[SegmentEntry]:
        """Write (and fsync) the bitmaps of commit `generation` deleting live `ids`; the new segment entries.

        Each file name is appended to `written` before its write, so a failed commit can remove it.
        """
        index = self._ids_index()
        masks = {si: self.deleted(si).copy() for si in {index[i][0] for i in ids}}
        for i in ids:
            si, local = index[i]
            masks[si][local] = True
        entries = list(self.manifest.segments)
        for si, mask in masks.items():
            fname = f"{entries[si].name}.{generation:06d}.del"
            written.append(fname)  # before the write: a failed fsync leaves the file behind
            write_durable(StorePath(self.root) / SEGMENTS_DIR / fname, encode_deletes(mask))
            entries[si] = replace(entries[si], deletes=fname, deleted=int(mask.sum()))
        return entries

    def _unlink_segment_files(self, names: list[str]) -> None:
        for fname in names:
            (StorePath(self.root) / SEGMENTS_DIR / fname).unlink(missing_ok=True)

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
        generation = m.generation + 1
        name = f"seg-{generation:06d}"
        seg_path = StorePath(self.root) / SEGMENTS_DIR / name
        made = False
        self.segments  # opened (and checked against the manifest) before masks sized by its counts are used
        keep = [np.flatnonzero(~self.deleted(si)) for si in range(len(m.segments))]
        n_docs = sum(len(k) for k in keep)
        n_tokens = sum(int(np.diff(seg.doc_offsets)[k].sum()) for seg, k in zip(self.segments, keep))
        try:
            entries: tuple[SegmentEntry, ...] = ()
            if n_docs:  # all deleted: the store keeps its codec and has no segment
                with_payloads = any(seg.has_payloads for seg, k in zip(self.segments, keep) if len(k))
                writer = SegmentWriter(seg_path, self.codec, n_docs, n_tokens, payloads=with_payloads)
                made = True
                drift_parts = []
                for e, seg, k in zip(m.segments, self.segments, keep):
                    if len(k):
                        copy_documents(seg, k, seg.ids(), writer)
                        live_tokens = int(np.diff(seg.doc_offsets)[k].sum())
                        drift_parts.append((_segment_far_tokens(seg.path), e.tokens, live_tokens))
                        failpoint("compact.batch_written")
                far = far_tokens_estimate(drift_parts)
                if far is not None:
                    writer.attrs[_drift.FAR_ATTR] = far
                writer.finish()
                failpoint("compact.segment_written")
                fsync_tree(seg_path)
                fsync_dir(self.root / SEGMENTS_DIR)
                fsync_dir(self.root)
                entries = (SegmentEntry(name=name, documents=n_docs, tokens=n_tokens),)
            failpoint("compact.before_commit")
            self._commit(replace(m, generation=generation, segments=entries))
        except BaseException as e:
            if not self._committed(generation) and made:
                seg_path.remove_tree()
            self._note_failure(e, "compact", generation)
            raise
        return generation

    def _note_failure(self, error: BaseException, what: str, generation: int) -> None:
        """Say on the error (a note: its type and errno stay as they were) where the store stands."""
        if self._committed(generation):
            error.add_note(f"lodestore: {what} failed after its commit point: {self.root} is at generation "
                           f"{generation}, which includes the {what}")
        else:
            error.add_note(f"lodestore: {what} failed; nothing was committed: {self.root} is still at "
                           f"generation {generation - 1}")

    def _commit(self, manifest: Manifest) -> None:
        try:
            write_manifest(self.root, manifest)
        finally:
            if self._committed(manifest.generation):
                # the rename happened (even if the directory fsync after it failed):
                # the new generation is the store's state from now on
                self.manifest = manifest
                self._segments_reset()
        # durable (step 7 done): what the previous generation named and this one does not is garbage now
        failpoint("commit.before_gc")
        try:
            _collect_garbage(self.root, manifest)
        except OSError as e:  # the commit stands; the next writable open collects what is left
            warnings.warn(f"{self.root}: committed generation {manifest.generation}, but removing old files failed: {e}",
                          stacklevel=3)

    def _committed(self, generation: int) -> bool:
        """Whether the manifest on disk names `generation` (i.e. the rename of step 6 happened)."""
        if self.manifest.generation == generation:
            return True
        try:
            return read_manifest(self.root).generation == generation
        except StoreError:
            return False

    def _segments_reset(self) -> None:
        for seg in self._segments or []:
            seg.close()
        self._segments = self._id_map = None
        self._load_deletes()

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, Any]:
        """Sizes and parameters: documents, tokens, segments, bytes on disk, bytes per token, per-array sizes."""
        m = self.manifest
        arrays: dict[str, int] = {}
        for s in m.segments:
            for name, size in segment_disk_usage(self.root / SEGMENTS_DIR / s.name).items():
                arrays[name] = arrays.get(name, 0) + size
        arrays["codec"] = _du(self.root / CODEC_DIR)
        total = _du(self.root) - _du(self.root / READERS_DIR)  # not the readers' own lease files
        tokens = m.tokens
        kind, pq_subspaces = settings_codec(m.settings)
        token_data = sum(arrays.get(k, 0) for k in ("codes", "residuals", "doc_offsets", "id_offsets", "id_bytes"))
        drift = _drift.summarize(
            [(s.name, s.tokens, _segment_far_tokens(StorePath(self.root) / SEGMENTS_DIR / s.name)) for s in m.segments],
            self._drift_threshold(),
        )
        return {
            "path": str(self.root),
            "format_version": m.format_version,
            "generation": m.generation,
            "documents": m.documents,
            "deleted": sum(s.deleted for s in m.segments),
            "tokens": tokens,
            "segments": len(m.segments),
            "dim": m.dim,
            "input_dim": self.input_dim,
            "reduction": m.settings.get("reduction") if self.input_dim != m.dim else None,
            "nbits": m.nbits,
            "codec": kind,
            "pq_subspaces": pq_subspaces,
            "residual_bytes_per_token": self.codec.residual_bytes if m.codec else None,
            "centroids": m.codec.num_centroids if m.codec else 0,
            "bytes_on_disk": total,
            "bytes_per_token": total / tokens if tokens else 0.0,
            "token_bytes_per_token": token_data / tokens if tokens else 0.0,
            "array_bytes": arrays,
            "drift": drift,
        }

    def verify(self) -> VerifyReport:
        """Check every checksum in the store: manifest body, codec, every chunk of every segment, bitmaps."""
        report = VerifyReport()
        try:
            read_manifest(self.root)
            report.checked += 1
        except StoreError as e:
            report.failures.append(str(e))
            return report
        if self.manifest.codec is not None:
            c, f = verify_codec(StorePath(self.root) / self.manifest.codec.path)
            report.checked += c
            report.failures += f
            if not f:
                try:
                    read_checked_codec(self.root, self.manifest.codec, nbits=self.nbits, dim=self.dim)
                except StoreError as e:
                    report.failures.append(str(e))
            if self.input_dim != self.dim:
                c, f = verify_small(StorePath(self.root) / PROJECTION_DIR / "matrix")
                report.checked += c
                report.failures += f
        for i, entry in enumerate(self.manifest.segments):
            try:
                seg = SegmentReader.open_entry(self.root, entry, self.manifest.codec)
            except StoreError as e:
                report.failures.append(str(e))
                continue
            try:
                c, f = seg.verify()
                report.checked += c
                report.failures += f
                if seg.n_docs != entry.documents or seg.n_tokens != entry.tokens:
                    report.failures.append(f"{seg.path}: size disagrees with the manifest")
            finally:
                seg.close()
            if entry.deletes:
                report.checked += 1
                try:
                    read_deletes(self.root, entry)
                except StoreError as e:
                    report.failures.append(str(e))
        return report


def _acquire_lock(root: Path) -> int:
    fd = (StorePath(root) / LOCK_NAME).open(os.O_RDWR | os.O_CREAT)  # a regular file, never through a symlink
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(f"{root}: another process is writing this store (lock {LOCK_NAME} is held)") from None
    return fd




def _collect_garbage(root: Path, manifest: Manifest) -> None:
    """Remove what the current manifest does not name and no reader can need (FORMAT.md section 13).

    Writer lock held, after `manifest` is durable. Files an older generation named
    (superseded bitmaps, compacted segments) stay while a live reader lease names them;
    a later commit or writable open removes them. While a lease is unreadable (being
    stamped) only crash leftovers of commits that never happened (a generation above the
    current one in the name) go.
    """
    (root / (MANIFEST_NAME + ".tmp")).unlink(missing_ok=True)
    named = manifest_files(manifest)
    seg_dir = StorePath(root) / SEGMENTS_DIR  # opened without following symlinks: a planted link is refused
    # only names of the grammar (FORMAT.md 4.1): what writers create; anything else is left alone
    garbage = [n for n in seg_dir.iterdir_names() if n not in named and _name_generation(n) is not None]
    if garbage:
        leases = live_leases(root)
        if any(files is None for _, files in leases):
            garbage = [n for n in garbage if (_name_generation(n) or 0) > manifest.generation]
        pinned = set().union(*[files for _, files in leases if files is not None])
        garbage = [n for n in garbage if n not in pinned]
    for n in garbage:
        (seg_dir / n).remove_tree()  # fd-based: a symlink entry is unlinked, its target never touched
    if manifest.codec is None:
        for name in (CODEC_DIR, PROJECTION_DIR):
            (StorePath(root) / name).remove_tree()


def write_projection(path: Path, matrix: np.ndarray, kind: str) -> None:
    """The reduction matrix as a Zarr group: attributes + one flat float32 array (FORMAT.md 7.6)."""
    import zarr

    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    group.attrs.update({"kind": kind, "input_dim": int(matrix.shape[0]), "dim": int(matrix.shape[1])})
    write_small_array(group, "matrix", np.ascontiguousarray(matrix, dtype=np.float32).ravel())


def manifest_files(manifest: Manifest) -> set[str]:
    """The names under segments/ that a manifest names: its segments and their current bitmaps."""
    return {s.name for s in manifest.segments} | {s.deletes for s in manifest.segments if s.deletes}


def _name_generation(name: str) -> int | None:
    """The generation that created `seg-{G}`, `{segment}.{G}.del` or `.spill-{pid}-{G}` (None for any other name)."""
    m = SEGMENT_NAME.match(name)
    if m is not None:
        return int(m.group(1))
    m = DELETES_NAME.match(name)
    if m is not None:
        return int(m.group(2))
    m = SPILL_NAME.match(name)
    return int(m.group(1)) if m is not None else None


def _segment_far_tokens(path: Path) -> int | None:
    """The far-token count a segment recorded at write time (None when it has none)."""
    value = read_attributes(path).get(_drift.FAR_ATTR)
    return int(value) if isinstance(value, int) else None


def _set_attributes(group_path: Path, attrs: dict[str, Any]) -> None:
    """Add attributes to a Zarr group being written (before its tree is fsynced)."""
    import zarr

    zarr.open_group(str(group_path), mode="r+").attrs.update(attrs)


def _du(path: Path) -> int:
    total = 0
    for dirpath, _d, files in os.walk(path):
        total += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)  # lstat: links are not followed
    return total


def _progress(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, disable=not enabled)
