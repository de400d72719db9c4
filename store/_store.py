"""The Store: create, open, add, delete, get, stats, verify.

A store is a directory (FORMAT.md section 4). Writers hold an exclusive lock;
readers see the generation the manifest named when they opened.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._codec import ensure_trained, training_sample_size, default_num_centroids
from ._codec_io import read_store_codec, verify_codec, write_codec
from ._codecs import (MANIFEST_KIND, Codec, creation_settings, reader_features, resolve_codec, settings_codec,
                      train_codec)
from ._pq import PQ_TRAINING_SAMPLE
from ._deletes import encode_deletes, read_deletes
from ._errors import StoreError, StoreLockedError
from ._fs import failpoint, fsync_dir, fsync_tree, write_durable
from ._ingest import DocSource, InMemorySource, open_source
from ._manifest import MANIFEST_NAME, CodecEntry, Manifest, SegmentEntry, read_manifest, write_manifest
from ._segment import SegmentReader, SegmentWriter, segment_disk_usage

SEGMENTS_DIR = "segments"
CODEC_DIR = "codec"
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

    def __init__(self, root: Path, manifest: Manifest, *, writable: bool, lock_fd: int | None = None):
        self.root = root
        self.manifest = manifest
        self.writable = writable
        self._lock_fd = lock_fd
        self._codec: Codec | None = None
        self._segments: list[SegmentReader] | None = None
        self._deleted: list[np.ndarray] = []
        self._id_map: dict[str, tuple[int, int]] | None = None
        self._load_deletes()  # now, not on first use: a later writer may collect superseded bitmaps

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike, dim: int = 128, nbits: int | None = None, *,
               codec: str | None = None, pq_subspaces: int | None = None,
               num_centroids: int | None = None, seed: int = 0) -> "Store":
        """Create an empty store at `path` (which must not exist or be an empty directory).

        codec: "scalar" (centroid + `nbits` 1/2/4 bits per dimension, default 2) or
        "pq" (centroid + `pq_subspaces` 16/32/64 bytes, one per residual subspace;
        default: the most that fit in dim/4 bytes). None: "scalar" when nbits is
        given, "pq" when pq_subspaces is, else the default: "pq" where it fits in dim/4 bytes
        (dim >= 64), "scalar" below (store/_codecs.py says why).
        """
        codec, nbits, pq_subspaces = resolve_codec(dim, nbits, codec, pq_subspaces)
        if num_centroids is not None and not 1 <= num_centroids <= 65536:
            raise ValueError(f"num_centroids must be in [1, 65536], got {num_centroids}")
        root = Path(path)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise FileExistsError(f"{root}: exists and is not an empty directory; refusing to create a store there")
        root.mkdir(parents=True, exist_ok=True)
        (root / SEGMENTS_DIR).mkdir()
        lock_fd = _acquire_lock(root)
        manifest = Manifest(generation=0, dim=int(dim), nbits=int(nbits),
                            settings={"num_centroids": num_centroids, "seed": int(seed),
                                      **creation_settings(codec, pq_subspaces)},
                            reader_features=reader_features(codec))
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
        try:
            manifest = read_manifest(root)
            if writable:
                manifest.check_writable()
                _collect_garbage(root, manifest)
            return cls(root, manifest, writable=writable, lock_fd=lock_fd)  # loads the deletion bitmaps
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    def close(self) -> None:
        for seg in self._segments or []:
            seg.close()
        self._segments = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

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
    def codec(self) -> Codec:
        """The trained codec, ResidualCodec or PQCodec (StoreError if nothing was added yet)."""
        entry = self.manifest.codec
        if self._codec is None and entry is not None:
            self._codec = read_store_codec(self.root / entry.path, entry.kind, nbits=self.nbits, dim=self.dim,
                                           pq_subspaces=entry.pq_subspaces)
        return ensure_trained(self._codec)

    @property
    def segments(self) -> list[SegmentReader]:
        """Readers of the committed segments, in manifest order."""
        if self._segments is None:
            self._segments = [SegmentReader.open(self.root / SEGMENTS_DIR / s.name) for s in self.manifest.segments]
        return self._segments

    def open_segments(self) -> list[SegmentReader]:
        """New readers of this generation's segments, owned (and closed) by the caller.

        For a long-lived reader such as a Searcher: the store's own readers are
        closed and replaced when this handle commits.
        """
        return [SegmentReader.open(self.root / SEGMENTS_DIR / s.name) for s in self.manifest.segments]

    def deleted(self, i: int) -> np.ndarray:
        """Boolean deletion mask of segment i (all False when it has no deletions)."""
        return self._deleted[i]

    def _load_deletes(self) -> None:
        self._deleted = [
            read_deletes(self.root / SEGMENTS_DIR / e.deletes, e.documents) if e.deletes else np.zeros(e.documents, dtype=bool)
            for e in self.manifest.segments
        ]

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
        return self.codec.decode(codes, residuals)

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if self.writable and self._lock_fd is None:  # closed: it no longer holds the writer lock
            raise StoreError("store handle is closed: open the store again (writable=True) to change it")
        if not self.writable:
            raise StoreError("store opened read-only: use Store.open(path, writable=True) to change it")

    def add(self, ids: Sequence[str], embeddings: Sequence[Any], *, progress: bool = False) -> int:
        """Add documents in one commit; trains the codec on the first add. Returns the new generation.

        Embeddings: one (n_tokens, dim) float16/32/64 numpy array or torch tensor per
        document; rows are L2-normalized on the way in. On bad input a ValueError
        names the document and nothing is written.
        """
        self._require_writable()
        source = InMemorySource(ids, embeddings, self.dim, set(self._ids_index()))
        return self.add_source(source, progress=progress)

    def add_embeddings(self, path: str | os.PathLike, *, progress: bool = True) -> int:
        """Add an embedding bundle (docs.npy + doclens.npy [+ ids.txt]) or a directory of .npy files."""
        self._require_writable()
        return self.add_source(open_source(path, self.dim, set(self._ids_index())), progress=progress)

    def add_source(self, source: DocSource, *, progress: bool = False) -> int:
        """Encode a document source into one new segment and commit it (FORMAT.md section 12)."""
        self._require_writable()
        if source.dim != self.dim:
            raise ValueError(f"source has dim {source.dim}, the store has dim {self.dim}")
        m = self.manifest
        new_codec = m.codec is None
        codec = self._train_codec(source) if new_codec else self.codec
        generation = m.generation + 1
        name = f"seg-{generation:06d}"
        seg_path = self.root / SEGMENTS_DIR / name
        codec_path = self.root / CODEC_DIR
        try:
            if new_codec:
                write_codec(codec_path, codec)
                failpoint("add.codec_written")
            writer = SegmentWriter(seg_path, codec, source.n_docs, source.n_tokens)
            bar = _progress(progress, source.n_tokens, f"encoding {name}")
            for batch_ids, doclens, tokens in source.batches():
                codes, residuals = codec.encode(tokens)
                writer.append(batch_ids, doclens, codes, residuals)
                bar.update(len(tokens))
                failpoint("add.batch_written")
            bar.close()
            writer.finish()
            failpoint("add.segment_written")
            fsync_tree(seg_path)
            if new_codec:
                fsync_tree(codec_path)
            fsync_dir(self.root / SEGMENTS_DIR)
            fsync_dir(self.root)
            failpoint("add.before_commit")
            entry = SegmentEntry(name=name, documents=source.n_docs, tokens=source.n_tokens)
            kind, pq_subspaces = settings_codec(m.settings)
            codec_entry = m.codec or CodecEntry(MANIFEST_KIND[kind], CODEC_DIR, self.dim, self.nbits,
                                                codec.num_centroids, pq_subspaces=pq_subspaces)
            self._commit(replace(m, generation=generation, codec=codec_entry, segments=m.segments + (entry,)))
        except BaseException:
            if not self._committed(generation):  # not committed: leave no trace
                shutil.rmtree(seg_path, ignore_errors=True)
                if new_codec:
                    shutil.rmtree(codec_path, ignore_errors=True)
            raise
        self._codec = codec
        return generation

    def _train_codec(self, source: DocSource) -> Codec:
        settings = self.manifest.settings
        kind, pq_subspaces = settings_codec(settings)
        k = settings.get("num_centroids") or default_num_centroids(source.n_tokens)
        seed = int(settings.get("seed", 0))
        sample = source.sample(training_sample_size(source.n_tokens, k), seed)
        # pq: its codebooks learn from a second draw (residuals of tokens k-means did not fit)
        residual_sample = source.sample(PQ_TRAINING_SAMPLE, seed + 1) if kind == "pq" else None
        codec = train_codec(sample, kind, nbits=self.nbits, pq_subspaces=pq_subspaces, num_centroids=k,
                            n_tokens=source.n_tokens, seed=seed, residual_sample=residual_sample)
        if codec.num_centroids < k:
            warnings.warn(
                f"the first add has only {source.n_tokens} tokens: the codec gets {codec.num_centroids} centroids "
                f"instead of {k}, for the life of this store; add a representative first batch for better compression",
                stacklevel=3,
            )
        return codec

    def delete(self, ids: Sequence[str]) -> int:
        """Mark documents deleted in one commit (new bitmap files; segments are never edited)."""
        self._require_writable()
        index = self._ids_index()
        ids = list(ids)
        if not ids:
            return self.manifest.generation  # nothing to delete: no new generation
        missing = [i for i in ids if i not in index]
        if missing:
            raise KeyError(f"cannot delete unknown document ids: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        m = self.manifest
        generation = m.generation + 1
        masks = {si: self.deleted(si).copy() for si in {index[i][0] for i in ids}}
        for i in ids:
            si, local = index[i]
            masks[si][local] = True
        entries = list(m.segments)
        written = []
        try:
            for si, mask in masks.items():
                fname = f"{entries[si].name}.{generation:06d}.del"
                written.append(fname)  # before the write: a failed fsync leaves the file behind
                write_durable(self.root / SEGMENTS_DIR / fname, encode_deletes(mask))
                entries[si] = replace(entries[si], deletes=fname, deleted=int(mask.sum()))
            fsync_dir(self.root / SEGMENTS_DIR)
            failpoint("delete.before_commit")
            self._commit(replace(m, generation=generation, segments=tuple(entries)))
        except BaseException:
            if not self._committed(generation):
                for fname in written:
                    (self.root / SEGMENTS_DIR / fname).unlink(missing_ok=True)
            raise
        return generation

    def _commit(self, manifest: Manifest) -> None:
        try:
            write_manifest(self.root, manifest)
        finally:
            if self._committed(manifest.generation):
                # the rename happened (even if the directory fsync after it failed):
                # the new generation is the store's state from now on
                self.manifest = manifest
                self._segments_reset()

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
        total = _du(self.root)
        tokens = m.tokens
        kind, pq_subspaces = settings_codec(m.settings)
        token_data = sum(arrays.get(k, 0) for k in ("codes", "residuals", "doc_offsets", "id_offsets", "id_bytes"))
        return {
            "path": str(self.root),
            "format_version": m.format_version,
            "generation": m.generation,
            "documents": m.documents,
            "deleted": sum(s.deleted for s in m.segments),
            "tokens": tokens,
            "segments": len(m.segments),
            "dim": m.dim,
            "nbits": m.nbits,
            "codec": kind,
            "pq_subspaces": pq_subspaces,
            "residual_bytes_per_token": self.codec.residual_bytes if m.codec else None,
            "centroids": m.codec.num_centroids if m.codec else 0,
            "bytes_on_disk": total,
            "bytes_per_token": total / tokens if tokens else 0.0,
            "token_bytes_per_token": token_data / tokens if tokens else 0.0,
            "array_bytes": arrays,
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
            c, f = verify_codec(self.root / self.manifest.codec.path)
            report.checked += c
            report.failures += f
        for i, entry in enumerate(self.manifest.segments):
            try:
                seg = SegmentReader.open(self.root / SEGMENTS_DIR / entry.name)
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
                    read_deletes(self.root / SEGMENTS_DIR / entry.deletes, entry.documents)
                except StoreError as e:
                    report.failures.append(str(e))
        return report


def _acquire_lock(root: Path) -> int:
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(f"{root}: another process is writing this store (lock {LOCK_NAME} is held)") from None
    return fd


def _collect_garbage(root: Path, manifest: Manifest) -> None:
    """Remove what no committed manifest names: crash leftovers (FORMAT.md section 13). Writer lock held."""
    (root / (MANIFEST_NAME + ".tmp")).unlink(missing_ok=True)
    live = {s.name for s in manifest.segments} | {s.deletes for s in manifest.segments if s.deletes}
    seg_dir = root / SEGMENTS_DIR
    for p in seg_dir.iterdir() if seg_dir.is_dir() else []:
        if p.name not in live:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if manifest.codec is None and (root / CODEC_DIR).exists():
        shutil.rmtree(root / CODEC_DIR, ignore_errors=True)


def _du(path: Path) -> int:
    total = 0
    for dirpath, _d, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def _progress(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, disable=not enabled)
