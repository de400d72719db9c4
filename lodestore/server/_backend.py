"""The store behind the app: one searchable snapshot per committed generation, and one writer at a time.

Reads: a Snapshot is the store opened read-only at one generation (an Index for a
text store, a Searcher for a vector store). Each request takes the current
snapshot and answers from it whole, so a search never mixes generations. Before
each search the backend compares the manifest file's identity (inode, mtime,
size: one stat) with the snapshot's; when a commit (from this worker, another
worker, or any other process) replaced it, the first request to notice opens the
new generation while others wait for that one refresh, then every request answers
from it. The old snapshot closes when its last in-flight search ends (its lease
keeps its files on disk until then), so no request is dropped.

Writes: one at a time per process (an asyncio lock, held by the app) and across
processes by the store's writer lock, which a write waits for up to a bound. Each
write opens the store writable, commits once and closes it; then this worker
refreshes before answering, so its next search sees the write.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lodestore.hybrid import DEFAULT_FUSION, DEFAULT_MODE
from lodestore.store import StoreLockedError

from ._config import ServeConfig
from ._validate import AddRequest, ApiError

MANIFEST = "manifest.json"


def manifest_signature(root: Path) -> tuple[int, int, int] | None:
    """Identity of the committed manifest: it is replaced (new inode) at every commit."""
    try:
        st = os.stat(root / MANIFEST)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def hit_dict(doc_id: str, score: float, payload: dict[str, Any] | None) -> dict[str, Any]:
    p = payload or {}
    return {"id": doc_id, "score": float(score), "title": p.get("title") or "", "text": p.get("text") or "",
            "metadata": p.get("metadata") or {}}


def decode_payload(data: bytes | None) -> dict[str, Any]:
    """The JSON title/text/metadata an Index (or this server) stores beside a document; {} for anything else."""
    if not data:
        return {}
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class Snapshot:
    """The store at one generation, open for searching; closed once retired and unused."""

    def __init__(self, root: Path, kind: str, encoder: Any, searcher_options: dict[str, Any]):
        from lodestore.store import Store

        self.signature = manifest_signature(root)  # before opening: a later commit shows as a change
        self.kind = kind
        self.index = self.searcher = self.store = None
        self._refs = 0
        self._retired = False
        self._lock = threading.Lock()
        if kind == "text":
            from lodestore.index import Index

            self.index = Index.open(root, encoder, **searcher_options)
            self.store = self.index.store
        else:
            self.store = Store.open(root)
        self.generation = self.store.generation
        self.dim = self.store.input_dim
        self.empty = self.store.manifest.codec is None or not self.store.manifest.segments
        try:
            if not self.empty:  # load the searcher now, not during the first request
                if self.index is not None:
                    self.searcher = self.index.searcher
                else:
                    from lodestore.engine import Searcher

                    self.searcher = Searcher(self.store, **searcher_options)
        except BaseException:
            self._close()
            raise

    @property
    def encoder(self) -> Any:
        return self.index.encoder if self.index is not None else None

    # ------------------------------------------------------------------ reference counting
    def acquire(self) -> None:
        with self._lock:
            self._refs += 1

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            close = self._retired and self._refs == 0
        if close:
            self._close()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            close = self._refs == 0
        if close:
            self._close()

    def _close(self) -> None:
        if self.index is not None:
            self.index.close()
        else:
            if self.searcher is not None:
                self.searcher.close()
            if self.store is not None:
                self.store.close()

    # ------------------------------------------------------------------ searching (in a worker thread)
    def search(self, texts: list[str] | None, vectors: list[np.ndarray] | None, k: int, *,
               where: str | None = None, params: list[Any] | None = None, mode: str = DEFAULT_MODE,
               fusion: str = DEFAULT_FUSION) -> list[list[dict]]:
        """Hits for text queries (through the Index: any mode) or query vectors (the Searcher: maxsim),
        only among documents matching `where` when given."""
        n = len(texts) if texts is not None else len(vectors)
        if self.empty or self.searcher is None:
            return [[] for _ in range(n)]
        if texts is not None:
            return [[hit_dict(h.id, h.score, {"title": h.title, "text": h.text, "metadata": h.metadata}) for h in hits]
                    for hits in self.index.search(texts, k=k, mode=mode, fusion=fusion, where=where, params=params)]
        raw = self.searcher.search(list(vectors), k=k, where=where, params=params)
        out = []
        for hits in raw:
            payloads = self.store.payloads([doc_id for doc_id, _ in hits])
            out.append([hit_dict(doc_id, score, decode_payload(p)) for (doc_id, score), p in zip(hits, payloads)])
        return out

    def stats(self) -> dict[str, Any]:
        s = self.store.stats()
        out = {key: s[key] for key in ("generation", "documents", "deleted", "tokens", "segments", "dim", "input_dim",
                                       "codec", "bytes_on_disk")}
        out["searcher"] = self.searcher.stats() if self.searcher is not None else None
        return out


@dataclass
class Counters:
    searches: int = 0
    queries: int = 0
    writes: int = 0
    refreshes: int = 0
    errors: int = 0


class Backend:
    """The served store: the current snapshot, refreshing it, and the write operations."""

    def __init__(self, config: ServeConfig):
        from lodestore.store import Store

        self.config = config
        self.root = Path(config.path)
        with Store.open(self.root) as store:  # read-only: what kind of store, and its query width (fixed at creation)
            self.kind = "text" if store.manifest.encoder else "vectors"
            self.dim = store.input_dim
        self.searcher_options: dict[str, Any] = {}
        if config.memory_budget is not None:
            self.searcher_options["memory_budget"] = config.memory_budget
        self.encoder: Any = None
        if config.encoder_dir is not None:  # e.g. a `lodestore convert-model` directory
            from lodestore.text import Encoder

            self.encoder = Encoder.from_dir(config.encoder_dir)
        self.counters = Counters()
        self._snapshot: Snapshot | None = None
        self._swap = threading.Lock()

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def stale(self) -> bool:
        snap = self._snapshot
        return snap is None or manifest_signature(self.root) != snap.signature

    def open_snapshot(self) -> Snapshot:
        """Open the newest generation and make it current (blocking: run in a thread)."""
        snap = Snapshot(self.root, self.kind, self.encoder, self.searcher_options)
        self.encoder = self.encoder or snap.encoder  # one encoder for every later generation
        with self._swap:
            old, self._snapshot = self._snapshot, snap
        if old is not None:
            old.retire()
            self.counters.refreshes += 1
        return snap

    def acquire(self) -> Snapshot:
        """The current snapshot, held until release() (callers must release it)."""
        with self._swap:
            snap = self._snapshot
            if snap is None:
                raise ApiError(503, "not_ready", "the store is not open yet", None, {"Retry-After": "1"})
            snap.acquire()
        return snap

    def close(self) -> None:
        with self._swap:
            old, self._snapshot = self._snapshot, None
        if old is not None:
            old.retire()

    # ------------------------------------------------------------------ writing (in the writer thread)
    def _writable(self, deadline: float) -> Any:
        """The store (or Index) opened writable, waiting for another process's writer lock until `deadline`."""
        while True:
            try:
                if self.kind == "text":
                    from lodestore.index import Index

                    return Index.open(self.root, self.encoder, writable=True)
                from lodestore.store import Store

                return Store.open(self.root, writable=True)
            except StoreLockedError:
                if time.monotonic() >= deadline:
                    raise ApiError(503, "writer_busy", "another process holds the store's writer lock; try again",
                                   None, {"Retry-After": "1"}) from None
                time.sleep(0.05)

    def write(self, op: Callable[[Any], int], deadline: float) -> int:
        handle = self._writable(deadline)
        try:
            generation = op(handle)
        finally:
            handle.close()
        self.counters.writes += 1
        return generation

    def add(self, req: AddRequest, deadline: float) -> int:
        from lodestore.index import document_payloads

        n = len(req.ids)
        titles = req.titles or [""] * n
        metadata = req.metadata or [{}] * n

        def op(handle: Any) -> int:
            if self.kind == "text":
                self._check_new(handle.store, req)
                return handle.add(req.ids, req.texts, metadata, titles=titles, upsert=req.upsert)
            self._check_new(handle, req)
            payloads = None
            if req.texts is not None or req.titles is not None or req.metadata is not None:
                payloads = document_payloads(req.texts or [""] * n, titles, metadata)
            return handle.add(req.ids, req.vectors, payloads=payloads, metadata=req.metadata, upsert=req.upsert)

        return self.write(op, deadline)

    @staticmethod
    def _check_new(store: Any, req: AddRequest) -> None:
        if req.upsert:
            return
        known = [i for i, doc_id in enumerate(req.ids) if doc_id in store]
        if known:
            raise ApiError(409, "id_exists", f"ids[{known[0]}]: document {req.ids[known[0]]!r} is already in the store "
                                             "(send upsert: true to replace it); nothing was written", f"ids[{known[0]}]")

    def delete(self, ids: list[str], deadline: float) -> int:
        def op(handle: Any) -> int:
            store = handle.store if self.kind == "text" else handle
            missing = [i for i, doc_id in enumerate(ids) if doc_id not in store]
            if missing:
                raise ApiError(404, "unknown_id", f"ids[{missing[0]}]: no document {ids[missing[0]]!r} in the store; "
                                                  "nothing was deleted", f"ids[{missing[0]}]")
            return handle.delete(ids)

        return self.write(op, deadline)

    def compact(self, deadline: float) -> int:
        return self.write(lambda handle: (handle.store if self.kind == "text" else handle).compact(), deadline)


def process_rss() -> int:
    """This process's resident set size in bytes (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
