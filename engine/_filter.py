"""Which documents a search may return: a metadata filter (where=/params=) and an id subset, as one set.

The filter is compiled (lodestore.store compile_where: a ValueError for any problem)
before any search work, then evaluated over the typed metadata columns of the
Searcher's own segment readers, loaded once at the first filtered search and kept
resident (stats()["metadata_bytes"]). Deleted documents are never admitted.

How the engine uses the set (engine/_probe.py Prober.candidates): with M admitted
documents and C the live candidates probing finds for the query (what an unfiltered
search would score by centroid interaction), it scores all M directly when M <= C —
exact at that stage, and no more work than the unfiltered query — and otherwise keeps
the probed candidates that are admitted. The threshold is the query's own candidate
count, not a constant: a selective filter never starves the candidate list, a broad
one costs one mask lookup per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from lodestore.store import Where, compile_where

from ._corpus import Corpus


@dataclass(frozen=True)
class Allowed:
    """The admitted documents: ascending global numbers and the same as a mask over the corpus."""

    docs: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return len(self.docs)


class DocFilter:
    """Metadata filtering over one corpus (one store generation)."""

    def __init__(self, corpus: Corpus):
        self.corpus = corpus
        segs = corpus.segments
        self.fields: dict[str, str] = dict(segs[0].metadata_schema or {}) if segs else {}
        self._loaded = False

    def compile(self, where: str | None, params: Sequence[Any] | None) -> Where | None:
        """The checked filter (None without one); ValueError naming what is wrong, before any search work."""
        if where is None:
            if params:
                raise ValueError("params were given without a where expression")
            return None
        return compile_where(where, params, self.fields)

    @property
    def resident_bytes(self) -> int:
        """Bytes of the metadata columns loaded so far (0 until a filtered search)."""
        if not self._loaded:
            return 0
        return sum(seg.metadata().nbytes for seg in self.corpus.segments)

    def allowed(self, where: Where | None, subset: np.ndarray | None) -> Allowed | None:
        """The live documents matching `where` and in `subset` (global numbers); None when neither is given."""
        if where is None and subset is None:
            return None
        c = self.corpus
        mask = ~c.deleted
        if where is not None:
            self._loaded = True
            mask &= np.concatenate([where.mask(seg.metadata()) for seg in c.segments])
        if subset is not None:
            inside = np.zeros(c.n_docs, dtype=bool)
            inside[subset] = True
            mask &= inside
        return Allowed(np.flatnonzero(mask), mask)
