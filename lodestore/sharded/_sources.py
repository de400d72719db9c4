"""One shard's part of a document source: the documents routed to it, streamed from the whole source.

A bundle on disk is read once per shard that receives documents (each pass bounded by one
batch of the parent), so memory stays as small as a one-store add's.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from lodestore.store import DocSource


class SubsetSource(DocSource):
    """The documents at sorted `positions` of `parent`, in the parent's order."""

    def __init__(self, parent: DocSource, positions: list[int], doclens: np.ndarray):
        self.parent = parent
        self.positions = np.asarray(positions, dtype=np.int64)
        all_ids = parent.ids()
        self._ids = [all_ids[p] for p in self.positions.tolist()]
        self.dim = parent.dim
        self.n_docs = len(self._ids)
        self.n_tokens = int(doclens[self.positions].sum())
        if parent.payloads is not None:
            self.payloads = [parent.payloads[p] for p in self.positions.tolist()]

    def ids(self) -> list[str]:
        return self._ids

    def batches(self) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        start = 0  # position in the parent of the first document of the batch
        for ids, doclens, tokens in self.parent.batches():
            n = len(ids)
            lo, hi = np.searchsorted(self.positions, [start, start + n])
            if hi > lo:
                keep = self.positions[lo:hi] - start
                offsets = np.concatenate([[0], np.cumsum(doclens)])
                rows = np.concatenate([np.arange(offsets[d], offsets[d + 1]) for d in keep.tolist()])
                yield [ids[d] for d in keep.tolist()], np.asarray(doclens)[keep], tokens[rows]
            start += n

    def sample(self, n: int, seed: int) -> np.ndarray:
        """Not used by a shard's add (the shared codec is trained on the whole source); kept for the contract."""
        rows = [t for _, _, t in self.batches()]
        x = np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32)
        pick = np.random.default_rng(seed).choice(len(x), size=min(n, len(x)), replace=False)
        return x[np.sort(pick)]


def doclens_of(source: DocSource) -> np.ndarray:
    """Tokens per document of a source, in document order (one pass for sources that do not hold them)."""
    lens = getattr(source, "doclens", None)
    if lens is not None:
        return np.asarray(lens, dtype=np.int64)
    docs = getattr(source, "docs", None)
    if docs is not None:
        return np.array([len(d) for d in docs], dtype=np.int64)
    return np.concatenate([np.asarray(d, np.int64) for _, d, _ in source.batches()])
