"""ShardedStore: N ordinary stores behind one root manifest, documents routed by a stable hash of their id.

Writes go to the shards that hold the documents (`add` with `upsert`, `delete`, `get`: one
shard per id; `compact`: every shard, each on its own). Every shard commits atomically on
its own; a write spanning shards is not atomic across them: on a failure the error names
the shards that committed their part (re-running an add with upsert=True, or the delete of
the ids still live, finishes it). The first add trains one codec on a sample of the whole
batch and commits it into every shard first (Store.adopt_codec), so the union of the shards
holds document for document what one store with that codec would (docs/FORMAT.md section 15).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lodestore.store import CorruptStoreError, DocSource, Store, StoreError, VerifyReport, open_source

from ._errors import ShardError
from ._manifest import MAX_SHARDS, RootManifest, ShardEntry, codec_identity, read_root, route, shard_of, write_root
from ._sources import SubsetSource, doclens_of

SHARDS_DIR = "shards"


@dataclass
class ShardedVerifyReport:
    """Every shard's VerifyReport, and the checks across shards (the shared codec's identity)."""

    reports: dict[str, VerifyReport] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # each names its shard

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def checked(self) -> int:
        return sum(r.checked for r in self.reports.values())

    def __str__(self) -> str:
        head = f"{len(self.reports)} shards, {self.checked} chunks checked, {len(self.failures)} failures"
        return "\n".join([head] + [f"  CORRUPT {f}" for f in self.failures])


class ShardedStore:
    """A sharded lodestore store. Create with ShardedStore.create, open with ShardedStore.open."""

    def __init__(self, root: Path, manifest: RootManifest, shards: list[Store], *, writable: bool,
                 lock_fd: int | None = None):
        self.root, self.manifest, self.shards, self.writable = root, manifest, shards, writable
        self._lock_fd = lock_fd

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, root: str | os.PathLike, n_shards: int = 4, dim: int = 128, *,
               locations: Sequence[str | os.PathLike] | None = None, resources: Sequence[str | None] | None = None,
               **store_options: Any) -> "ShardedStore":
        """Create an empty sharded store: the root manifest and `n_shards` empty stores.

        locations: each shard's store directory (default `root/shards/shard-NNN`); a relative
        path is taken from the root, an absolute one may be on another disk. resources: per
        shard, the Ray custom resource of the node that should serve it (None: any node).
        store_options: Store.create's (codec, nbits, pq_subspaces, num_centroids, seed,
        input_dim, reduction, encoder), the same for every shard.
        """
        if type(n_shards) is not int or not 1 <= n_shards <= MAX_SHARDS:
            raise ValueError(f"n_shards must be an integer in [1, {MAX_SHARDS}], got {n_shards!r}")
        locations = [f"{SHARDS_DIR}/shard-{i:03d}" for i in range(n_shards)] if locations is None else \
            [str(p) for p in locations]
        resources = [None] * n_shards if resources is None else list(resources)
        if len(locations) != n_shards or len(resources) != n_shards:
            raise ValueError(f"give one location and one resource per shard ({n_shards})")
        if any(r is not None and not (isinstance(r, str) and r) for r in resources):
            raise ValueError(f"resources must be non-empty strings or None, got {resources!r}")
        root = Path(root)
        entries = tuple(ShardEntry(f"shard-{i:03d}", p, r) for i, (p, r) in enumerate(zip(locations, resources)))
        manifest = RootManifest(dim=int(dim), input_dim=int(store_options.get("input_dim") or dim), shards=entries)
        paths = [manifest.shard_path(root, i) for i in range(n_shards)]
        if len({os.path.abspath(p) for p in paths}) != n_shards:
            raise ValueError("two shards share a location")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise FileExistsError(f"{root}: exists and is not an empty directory; refusing to create a store there")
        made_root = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        from lodestore.store._commit import acquire_lock

        lock_fd = acquire_lock(root)
        shards: list[Store] = []
        try:
            for p in paths:  # the first checks the options: a bad one is refused before another shard exists
                shards.append(Store.create(p, dim=dim, **store_options))
            write_root(root, manifest)  # the commit point of creation: before it, no sharded store is there
        except BaseException:
            for s in shards:
                s.close()
                shutil.rmtree(s.root, ignore_errors=True)
            os.close(lock_fd)
            if made_root:  # everything under it is this call's
                shutil.rmtree(root, ignore_errors=True)
            else:
                (root / ".lock").unlink(missing_ok=True)
                if (root / SHARDS_DIR).is_dir() and not any((root / SHARDS_DIR).iterdir()):
                    (root / SHARDS_DIR).rmdir()
            raise
        return cls(root, manifest, shards, writable=True, lock_fd=lock_fd)

    @classmethod
    def open(cls, root: str | os.PathLike, *, writable: bool = False) -> "ShardedStore":
        """Open a sharded store: every shard, read-only unless writable=True (which takes every writer lock)."""
        root = Path(root)
        lock_fd = None
        if writable:
            from lodestore.store._commit import acquire_lock

            lock_fd = acquire_lock(root) if root.is_dir() else None
        shards: list[Store] = []
        try:
            manifest = read_root(root)
            for i, entry in enumerate(manifest.shards):
                try:
                    shards.append(Store.open(manifest.shard_path(root, i), writable=writable))
                except StoreError as e:
                    raise type(e)(f"shard {entry.name}: {e}") from e
        except BaseException:
            for s in shards:
                s.close()
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return cls(root, manifest, shards, writable=writable, lock_fd=lock_fd)

    def close(self) -> None:
        for s in self.shards:
            s.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "ShardedStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ShardedStore({str(self.root)!r}, shards={self.n_shards}, documents={len(self)}, "
                f"generations={self.generations})")

    # ------------------------------------------------------------------ reading
    @property
    def n_shards(self) -> int:
        return self.manifest.n_shards

    @property
    def generations(self) -> list[int]:
        """Each shard's committed generation, in shard order."""
        return [s.generation for s in self.shards]

    def shard_of(self, doc_id: str) -> int:
        """The shard number that holds (or would hold) `doc_id`."""
        return shard_of(doc_id, self.n_shards)

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and doc_id in self.shards[self.shard_of(doc_id)]

    def ids(self) -> list[str]:
        """Every live id, shard by shard."""
        return [i for s in self.shards for i in s.ids()]

    def get(self, doc_id: str) -> np.ndarray:
        """The decompressed token matrix of one document, from its shard."""
        return self.shards[self.shard_of(doc_id)].get(doc_id)

    def payloads(self, ids: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(ids)
        for i, positions in enumerate(route(list(ids), self.n_shards)):
            if positions:
                for p, data in zip(positions, self.shards[i].payloads([ids[p] for p in positions])):
                    out[p] = data
        return out

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if not self.writable or self._lock_fd is None:
            raise StoreError("sharded store not open for writing: use ShardedStore.open(root, writable=True)")

    def add(self, ids: Sequence[str], embeddings: Sequence[Any], *, payloads: Sequence[bytes] | None = None,
            upsert: bool = False, progress: bool = False) -> list[int]:
        """Add documents, each to its shard (one commit per shard that receives any); the shards' generations.

        Input is checked whole before any shard is written (a ValueError names the document).
        """
        self._require_writable()
        from lodestore.store._ingest import InMemorySource

        return self.add_source(InMemorySource(ids, embeddings, self.manifest.input_dim, None, payloads),
                               upsert=upsert, progress=progress)

    def add_embeddings(self, path: str | os.PathLike, *, ids: Sequence[str] | None = None,
                       upsert: bool = False, progress: bool = True) -> list[int]:
        """Add an embedding bundle or a directory of .npy files, routed by id."""
        self._require_writable()
        return self.add_source(open_source(path, self.manifest.input_dim, None, ids), upsert=upsert,
                               progress=progress)

    def add_source(self, source: DocSource, *, upsert: bool = False, progress: bool = False) -> list[int]:
        self._require_writable()
        ids = source.ids()
        parts = route(ids, self.n_shards)
        if not upsert:
            for shard, positions in zip(self.shards, parts):
                live = [ids[p] for p in positions if ids[p] in shard]
                if live:
                    raise ValueError(f"document id {live[0]!r} is already in the store ({len(live)} such ids in "
                                     f"{shard.root.name}); pass upsert=True to replace them")
        self._ensure_codec(source)
        lens = doclens_of(source)
        self._each(lambda shard, positions: shard.add_source(SubsetSource(source, positions, lens), upsert=upsert,
                                                             progress=progress), parts, "add")
        return self.generations

    def delete(self, ids: Sequence[str]) -> list[int]:
        """Delete live documents, each in its shard (KeyError naming unknown ids; then nothing is deleted)."""
        self._require_writable()
        if isinstance(ids, str):
            raise ValueError("ids must be a list of strings, not one string")
        ids = list(dict.fromkeys(ids))
        missing = [i for i in ids if i not in self]
        if missing:
            raise KeyError(f"cannot delete unknown document ids: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                           " (nothing was deleted)")
        self._each(lambda shard, positions: shard.delete([ids[p] for p in positions]), route(ids, self.n_shards),
                   "delete")
        return self.generations

    def compact(self) -> list[int]:
        """Compact every shard on its own (each one commit, or none when it has nothing to do)."""
        self._require_writable()
        self._each(lambda shard, _: shard.compact(), [[0]] * self.n_shards, "compact")
        return self.generations

    def _each(self, write, parts: list[list[int]], what: str) -> None:
        """Run `write(shard, positions)` on each shard with positions; a failure names the shards done."""
        done: list[str] = []
        for entry, shard, positions in zip(self.manifest.shards, self.shards, parts):
            if not positions:
                continue
            try:
                write(shard, positions)
            except BaseException as e:
                raise ShardError(f"shard {entry.name}: {what} failed: {type(e).__name__}: {e} (committed in "
                                 f"{', '.join(done) or 'no shard'}; other shards unchanged)", (entry.name,),
                                 {entry.name: str(e)}) from e
            done.append(entry.name)

    def _ensure_codec(self, source: DocSource) -> None:
        """Before the first add: one codec state trained on the whole `source`, adopted by every shard.

        A shard that adopted one already (an earlier first add that stopped part way) gives its
        state to the others, so the shards never hold two codecs.
        """
        if self.manifest.codec is not None:
            return
        have = [s for s in self.shards if s.manifest.codec is not None]
        state = have[0].codec_state() if have else self.shards[0].train_codec(source)
        for shard in self.shards:
            if shard.manifest.codec is None:
                shard.adopt_codec(state)
        identity = self._check_codecs()
        self.manifest = self.manifest.with_codec(identity, state.codec.name, state.codec.num_centroids)
        write_root(self.root, self.manifest)

    def _check_codecs(self) -> str:
        identities = {e.name: codec_identity(s.root) for e, s in zip(self.manifest.shards, self.shards)}
        if len(set(identities.values())) != 1:
            raise CorruptStoreError(f"{self.root}: the shards hold different codecs: {identities}")
        return next(iter(identities.values()))

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, Any]:
        """Totals over the shards (documents, deleted, tokens, bytes on disk) and every shard's Store.stats."""
        per = [{"shard": e.name, **s.stats()} for e, s in zip(self.manifest.shards, self.shards)]
        totals = {k: sum(p[k] for p in per) for k in ("documents", "deleted", "tokens", "bytes_on_disk")}
        return {"path": str(self.root), "shards": self.n_shards, **totals, "dim": self.manifest.dim,
                "input_dim": self.manifest.input_dim, "codec": self.manifest.codec, "routing": self.manifest.routing,
                "generations": self.generations, "per_shard": per}

    def verify(self) -> ShardedVerifyReport:
        """Every shard's verify (each failure prefixed with its shard), and the shared codec's identity."""
        report = ShardedVerifyReport()
        want = (self.manifest.codec or {}).get("identity")
        for entry, shard in zip(self.manifest.shards, self.shards):
            r = shard.verify()
            report.reports[entry.name] = r
            report.failures += [f"shard {entry.name}: {f}" for f in r.failures]
            if want is not None and codec_identity(shard.root) != want:
                report.failures.append(f"shard {entry.name}: {shard.root}/codec is not the shared codec "
                                       f"(the root manifest names {want})")
        return report
