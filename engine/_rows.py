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

    def __init__(self, corpus: Corpus, prefetcher: Prefetcher, prefetch: bool):
        self.corpus, self.prefetcher, self.prefetch = corpus, prefetcher, prefetch

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
