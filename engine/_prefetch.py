"""ESPN-style prefetcher: read candidates' token rows in background threads into a bounded cache.

The searcher submits candidate documents (best first) as soon as it knows
them, keeps scoring, and collects the rows later. Counters say how often the
rows were already there (hits), how often it had to wait (io_wait_s), and how
many bytes and read calls the disk saw.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np

Rows = tuple[np.ndarray, np.ndarray]  # (codes (n,), residuals (n, row_bytes)) of one document
ReadFn = Callable[[np.ndarray], tuple[list[Rows], dict]]


class Prefetcher:
    """Background reads of documents' token rows into an LRU cache bounded in bytes."""

    def __init__(self, read: ReadFn, cache_bytes: int, threads: int = 2, task_docs: int = 32,
                 read_concat: Callable | None = None):
        self._read = read
        self._read_concat = read_concat
        self.cache_bytes = int(cache_bytes)
        self.task_docs = task_docs
        self._cache: OrderedDict[int, Rows] = OrderedDict()
        self._cached_bytes = 0
        self._inflight: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lodestore-prefetch")
        self.reset_stats()

    def reset_stats(self) -> None:
        self.hits = self.waited = self.misses = 0
        self.bytes_read = self.read_calls = 0
        self.row_bytes = 0  # bytes of the rows read from the store files (what was needed), for read amplification
        self.read_waits = 0  # read calls that had to wait for the device (the rest found the page cache filled)
        self.io_wait_s = 0.0

    def prefetch(self, docs: np.ndarray) -> None:
        """Start reading every doc not cached or in flight, in the given (priority) order."""
        with self._lock:
            todo = [int(d) for d in docs if int(d) not in self._cache and int(d) not in self._inflight]
        for s in range(0, len(todo), self.task_docs):
            chunk = np.array(sorted(todo[s : s + self.task_docs]), dtype=np.int64)
            fut: Future = Future()
            with self._lock:  # mark in flight before the read can start (and finish)
                for d in chunk.tolist():
                    self._inflight[d] = fut
            self._pool.submit(self._load, chunk, fut)

    def _load(self, docs: np.ndarray, fut: Future) -> None:
        """Read docs into the cache and settle `fut`; a doc leaves the in-flight map only if it is still ours."""
        try:
            rows, io = self._read(docs)
        except BaseException as e:
            with self._lock:
                self._forget(docs, fut)
            fut.set_exception(e)
            return
        with self._lock:
            self._count(io)
            for d, r in zip(docs.tolist(), rows):
                self._put(d, r)
            self._forget(docs, fut)
        fut.set_result(None)

    def _count(self, io: dict) -> None:
        """Add a read's counters (the caller holds the lock)."""
        self.bytes_read += io["bytes"]
        self.read_calls += io["calls"]
        self.row_bytes += io.get("rows", 0)
        self.read_waits += io.get("waits", 0)

    def _forget(self, docs: np.ndarray, fut: Future) -> None:
        for d in docs.tolist():
            if self._inflight.get(d) is fut:
                del self._inflight[d]

    def _put(self, doc: int, rows: Rows) -> None:
        if doc in self._cache:
            self._cache.move_to_end(doc)
            return
        self._cache[doc] = rows
        self._cached_bytes += rows[0].nbytes + rows[1].nbytes
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old[0].nbytes + old[1].nbytes

    def cached(self, docs: np.ndarray) -> bool:
        """Whether every doc's rows are in the cache now (counts nothing)."""
        with self._lock:
            return all(d in self._cache for d in docs.tolist())

    def get(self, docs: np.ndarray) -> list[Rows]:
        """Rows of every doc, in order: from the cache, by waiting for a read in flight, or read now."""
        out: list[Rows | None] = [None] * len(docs)
        wait: dict[int, Future] = {}
        missing = []
        with self._lock:
            for i, d in enumerate(docs.tolist()):
                r = self._cache.get(d)
                if r is not None:
                    self._cache.move_to_end(d)
                    out[i] = r
                    self.hits += 1
                elif d in self._inflight:
                    wait[i] = self._inflight[d]
                    self.waited += 1
                else:
                    missing.append(i)
                    self.misses += 1
        t0 = time.perf_counter()
        if missing:
            ids = np.asarray(docs)[missing]
            order = np.argsort(ids, kind="stable")
            rows, io = self._read(ids[order])
            with self._lock:
                self._count(io)
            for j, r in zip(order.tolist(), rows):
                out[missing[j]] = r
        for i, fut in wait.items():
            fut.result()  # re-raises a read error (e.g. CorruptStoreError) here
        with self._lock:  # get() may run in several query threads at once
            self.io_wait_s += time.perf_counter() - t0
        if wait:
            with self._lock:
                for i in wait:
                    d = int(docs[i])
                    r = self._cache.get(d)
                    out[i] = r if r is not None else None
            lost = [i for i in wait if out[i] is None]  # evicted before we got it: read again
            if lost:
                rows, io = self._read(np.asarray(docs)[lost])
                with self._lock:
                    self._count(io)
                for i, r in zip(lost, rows):
                    out[i] = r
        # keep the rows just used (the cache is an LRU of recently scored documents)
        with self._lock:
            for i in missing:
                self._put(int(docs[i]), out[i])
        return out  # type: ignore[return-value]

    def read_through(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of docs read now and not cached (no prefetch: the OS page cache is the cache),
        concatenated in order: (codes, residuals, lengths). Counted as misses."""
        t0 = time.perf_counter()
        codes, res, lens, io = self._read_concat(docs)
        with self._lock:
            self.misses += len(docs)
            self._count(io)
            self.io_wait_s += time.perf_counter() - t0
        return codes, res, lens

    @property
    def resident_bytes(self) -> int:
        return self._cached_bytes

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cached_bytes = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
