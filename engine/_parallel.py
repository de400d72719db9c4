"""Spread the independent pieces of one query over a few threads (the caller's included).

numpy releases the GIL inside BLAS products, gathers (`take`), ufunc
reductions (`maximum.reduceat`) and `os.pread`, which is where a query's time
goes, so plain threads give real parallelism here. Pieces are claimed one at
a time from a shared counter (a thread that finishes early takes the next
piece), and each result lands at its piece's index: the output never depends
on which thread computed what.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


def default_threads() -> int:
    """Threads per query when the caller does not say: 2 where the process may use 2 cores, else 1.

    More than 2 buys little for one query's work (docs/BENCHMARKS.md 4.1, 4.2 measure one thread vs two).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


class Workers:
    """A persistent pool of `threads - 1` helper threads; the calling thread is the last one."""

    def __init__(self, threads: int):
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="lodestore-query") if threads > 1 else None

    def map(self, fn: Callable[[int], T], n: int) -> list[T]:
        """[fn(0), ..., fn(n - 1)], computed by up to `threads` threads; the first error is raised."""
        if self._pool is None or n < 2:
            return [fn(i) for i in range(n)]
        out: list = [None] * n
        counter = itertools.count()  # next() on it is atomic under the GIL
        failed: list[BaseException] = []

        def run() -> None:
            while not failed:
                i = next(counter)
                if i >= n:
                    return
                try:
                    out[i] = fn(i)
                except BaseException as e:  # stop every thread; raised once, by the caller
                    failed.append(e)

        helpers = [self._pool.submit(run) for _ in range(min(self.threads, n) - 1)]
        run()
        for h in helpers:
            h.result()
        if failed:
            raise failed[0]
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
