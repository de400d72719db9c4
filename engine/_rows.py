"""Where the survivors' token rows come from: the one place that chooses between rows resident in RAM,
the prefetcher's cache, and a read-through from disk (engine/_budget.py's placement decides which).

Every stage that needs rows (residual interaction's slices, exact MaxSim's chunks) asks a RowReader;
whichever way the rows come, they are the same bytes, so scores never depend on the placement.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._corpus import Corpus
from ._maxsim import ramp
from ._prefetch import Prefetcher

Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # (codes (T,), residual rows (T, m), lengths (n,)), concatenated
RowsOf = Callable[[np.ndarray, int], Rows]  # rows_of(docs, a): the rows of docs = final[a : a + len(docs)]


class RowReader:
    """The rows of a corpus's documents: resident, through the prefetcher's cache (prefetch on), or read now."""

    def __init__(self, corpus: Corpus, prefetcher: Prefetcher, prefetch: bool, hints: bool | str = False):
        self.corpus, self.prefetcher, self.prefetch = corpus, prefetcher, prefetch
        self.policy = HintPolicy(hints)
        self.hinted = 0  # read hints given to the kernel (runs of chunks), since reset

    @property
    def hints(self) -> bool:
        """Whether read hints are given now (fixed, or as the auto policy last decided)."""
        return self.policy.on

    def begin(self) -> tuple[int, int] | None:
        """Before a group of queries: what the auto policy needs to judge it (None when nothing to judge)."""
        if not self.policy.auto or self.resident or self.prefetch:
            return None
        return self.policy.device_bytes() or 0, self.prefetcher.row_bytes

    def end(self, mark: tuple[int, int] | None) -> None:
        """After the group: the auto policy sees how much of the rows it read came from the device."""
        if mark is not None:
            self.policy.observe((self.policy.device_bytes() or 0) - mark[0], self.prefetcher.row_bytes - mark[1])

    @property
    def resident(self) -> bool:
        return self.corpus.residuals is not None

    @property
    def reading_ahead(self) -> bool:
        """Whether rows are read ahead in background threads (prefetch on and the rows on disk)."""
        return self.prefetch and not self.resident

    def rows(self, docs: np.ndarray) -> Rows:
        """(codes, residual rows, lengths) of docs, concatenated in their order."""
        if self.resident:
            return self.corpus.resident_rows(docs)
        if self.prefetch:
            return stack(self.prefetcher.get(docs))
        return self.prefetcher.read_through(docs)

    def read_ahead(self, docs: np.ndarray) -> None:
        """Start reading docs' rows in the background (best first); nothing unless reading ahead."""
        if self.reading_ahead:
            self.prefetcher.prefetch(docs)

    def hint(self, docs: np.ndarray) -> None:
        """Tell the kernel docs' rows will be read soon (best first), so the device reads them all at
        once, in parallel, while the query works; nothing when rows are resident or read ahead by the
        prefetch threads, or hints are off. Costs a system call per run of chunks, no threads, no memory
        of ours: the pages land in the OS page cache, where the reads find them."""
        if self.policy.on and not self.resident and not self.prefetch and len(docs):
            self.hinted += self.corpus.advise(docs)

    def ready(self, docs: np.ndarray) -> bool:
        """Whether docs' rows can be had without waiting for a read."""
        return not self.reading_ahead or self.prefetcher.cached(docs)

    def rows_of(self, final: np.ndarray) -> tuple[RowsOf, Callable[[np.ndarray], bool] | None]:
        """For scoring `final` in pieces: (rows_of, ready), ready None when every piece is ready at once.

        Read through, all of final is read now in one call (no per-document copies, no cache) and
        sliced; resident rows and the prefetcher's cache are asked piece by piece.
        """
        if self.resident:
            return (lambda docs, a: self.corpus.resident_rows(docs)), None
        if not self.prefetch:
            return sliced(*self.prefetcher.read_through(final)), None
        return (lambda docs, a: stack(self.prefetcher.get(docs))), self.prefetcher.cached


class HintPolicy:
    """Whether to tell the kernel which rows come next: always, never, or "auto".

    Auto decides from what the queries measure: the bytes this process read from the device
    (/proc/self/io read_bytes) against the bytes of rows it read. Where the rows come from the page
    cache, a hint is a wasted system call per run of chunks, and the policy turns hints off; where a
    share above DEVICE_SHARE of them comes from the device, it turns them on. The device bytes are the
    same with hints or without (a hint moves a read earlier, it does not add one), so the decision
    does not feed back on itself. An average over the last ~8 query groups (EWMA), starting on: a
    Searcher's first queries are the coldest. Where /proc/self/io is missing, auto means on.
    """

    DEVICE_SHARE = 0.05
    SMOOTHING = 0.125

    def __init__(self, mode: bool | str):
        self.auto = isinstance(mode, str)
        if self.auto and mode != "auto":
            raise ValueError(f"read_hints must be True, False or 'auto', got {mode!r}")
        self.on = True if self.auto else bool(mode)
        self.share = 1.0  # smoothed device bytes / row bytes
        if self.auto and self.device_bytes() is None:
            self.auto = False  # nothing to measure: stay on

    @staticmethod
    def device_bytes() -> int | None:
        """Bytes this process has caused to be read from storage so far (None where unknown)."""
        try:
            with open("/proc/self/io", "rb") as f:
                text = f.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
        return None

    def observe(self, device: int, rows: int) -> None:
        """A query group read `rows` bytes of rows while the process read `device` bytes from storage."""
        if rows <= 0:
            return
        self.share += self.SMOOTHING * (min(device / rows, 4.0) - self.share)
        self.on = self.share > self.DEVICE_SHARE


def sliced(codes: np.ndarray, res: np.ndarray, lens: np.ndarray) -> RowsOf:
    """rows_of over documents already concatenated in order: views, no copies."""
    bounds = np.concatenate([[0], np.cumsum(lens)])
    return lambda docs, a: (codes[bounds[a] : bounds[a + len(docs)]], res[bounds[a] : bounds[a + len(docs)]],
                            lens[a : a + len(docs)])


def select_docs(codes: np.ndarray, res: np.ndarray, lens: np.ndarray, which: np.ndarray) -> Rows:
    """Of documents concatenated as (codes, residual rows, lengths), those numbered `which`, concatenated
    in that order (copies: the rest can be freed)."""
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])[which]
    idx = np.repeat(starts, lens[which]) + ramp(lens[which])
    return np.take(codes, idx), np.take(res, idx, axis=0), lens[which].astype(np.int64)


def stack(rows: list) -> Rows:
    """Per-document (codes, residuals) pairs -> concatenated codes, residuals, and lengths."""
    return (np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]),
            np.array([len(r[0]) for r in rows], dtype=np.int64))
