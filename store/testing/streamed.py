"""A synthetic corpus of any size that never exists as a whole: documents are generated as they are consumed.

`SyntheticCorpus` names a corpus of store/testing/synthetic.py's model by its parameters (the same
parameters give the same vectors, whatever is asked for and in what pieces). Its documents come out
slice by slice (`SyntheticSource`, a DocSource that Store.add_source encodes while generating, so a
1e8-token store needs no 26 GB bundle), any of its token rows can be regenerated on demand (`rows`:
what queries aimed at known documents sample), and `chunks` streams it for exact ground truth.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

from .._ingest import DocSource
from .synthetic import BLOCK_DOCS, _block_tokens, _make_bank, corpus_doclens, default_n_clusters, make_queries

ID_FORMAT = "doc{:09d}"  # document i's id: sorts as the documents do
CHUNK_DOCS = 4 * BLOCK_DOCS  # documents generated per step (~80k tokens, ~40 MB of float32 at d=128)
SAMPLE_ROWS_PER_BLOCK = 8000  # training-sample rows per generated block (about 2 in 5 of its rows)


@dataclass(frozen=True)
class SyntheticCorpus:
    """The parameters of a synthetic corpus: n_tokens in dim dimensions (iter_corpus_chunks' model)."""

    n_tokens: int
    dim: int = 128
    seed: int = 0
    n_clusters: int | None = None
    mean_len: int = 80
    min_len: int = 30
    max_len: int = 300
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("_cache")
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SyntheticCorpus":
        return cls(**json.loads(text))

    @cached_property
    def doclens(self) -> np.ndarray:
        return corpus_doclens(n_tokens=int(self.n_tokens), mean_len=self.mean_len, min_len=self.min_len,
                              max_len=self.max_len, seed=self.seed)

    @cached_property
    def offsets(self) -> np.ndarray:
        """Each document's first token row (and the total at the end)."""
        return np.concatenate([[0], np.cumsum(self.doclens)]).astype(np.int64)

    @cached_property
    def bank(self):
        k = default_n_clusters(int(self.doclens.sum())) if self.n_clusters is None else self.n_clusters
        return _make_bank(k, self.dim, self.seed)

    @property
    def n_docs(self) -> int:
        return len(self.doclens)

    @property
    def total_tokens(self) -> int:
        return int(self.offsets[-1])

    def ids(self, start: int, stop: int) -> list[str]:
        return [ID_FORMAT.format(i) for i in range(start, stop)]

    def block(self, b: int) -> np.ndarray:
        """The token rows of generator block b (documents b*BLOCK_DOCS ...), float32 unit rows."""
        lens = self.doclens[b * BLOCK_DOCS : (b + 1) * BLOCK_DOCS]
        return _block_tokens(self.bank, lens, self.seed, b)

    def chunks(self, start: int = 0, stop: int | None = None, chunk_docs: int = CHUNK_DOCS
               ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (first document, doclens, tokens) for documents [start, stop), in order."""
        stop = self.n_docs if stop is None else min(stop, self.n_docs)
        step = max(1, chunk_docs // BLOCK_DOCS) * BLOCK_DOCS
        a = start
        while a < stop:
            first_block, b = a // BLOCK_DOCS, min(stop, (a // BLOCK_DOCS) * BLOCK_DOCS + step)
            last_block = -(-b // BLOCK_DOCS)
            tokens = np.concatenate([self.block(k) for k in range(first_block, last_block)])
            base = self.offsets[first_block * BLOCK_DOCS]
            lo, hi = self.offsets[a] - base, self.offsets[b] - base
            yield a, self.doclens[a:b].copy(), tokens[lo:hi]
            a = b

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Token rows by global row number (regenerating the blocks that hold them), float32."""
        rows = np.asarray(rows, dtype=np.int64)
        doc = np.searchsorted(self.offsets, rows, side="right") - 1
        blocks = doc // BLOCK_DOCS
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for b in np.unique(blocks).tolist():
            sel = np.flatnonzero(blocks == b)
            out[sel] = self.block(b)[rows[sel] - self.offsets[b * BLOCK_DOCS]]
        return out

    def queries(self, n: int, q_len: int = 32, *, seed: int = 1, **noise) -> tuple[np.ndarray, np.ndarray]:
        """(queries (n, q_len, dim), target documents): make_queries over this corpus, reading only the
        rows it samples."""
        return make_queries(_Rows(self), self.doclens, n, q_len, seed=seed, **noise)


class _Rows:
    """Just enough of an array for make_queries: a shape and sorted row gathers."""

    def __init__(self, corpus: SyntheticCorpus):
        self.corpus = corpus
        self.shape = (corpus.total_tokens, corpus.dim)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return self.corpus.rows(rows)


class SyntheticSource(DocSource):
    """Documents [start, stop) of a SyntheticCorpus as a DocSource: generated while they are encoded."""

    def __init__(self, corpus: SyntheticCorpus, start: int = 0, stop: int | None = None):
        stop = corpus.n_docs if stop is None else min(stop, corpus.n_docs)
        if not 0 <= start < stop:
            raise ValueError(f"no documents in [{start}, {stop}) of a corpus of {corpus.n_docs}")
        self.corpus, self.start, self.stop = corpus, start, stop
        self.dim = corpus.dim
        self.n_docs = stop - start
        self.n_tokens = int(corpus.offsets[stop] - corpus.offsets[start])

    def ids(self) -> list[str]:
        return self.corpus.ids(self.start, self.stop)

    def batches(self):
        for a, lens, tokens in self.corpus.chunks(self.start, self.stop):
            yield self.corpus.ids(a, a + len(lens)), lens, tokens

    def sample(self, n: int, seed: int) -> np.ndarray:
        """n token rows drawn from random generator blocks of the slice: about one block (~20,000 tokens
        at the default lengths, generated whole) per SAMPLE_ROWS_PER_BLOCK rows asked for, so the rows
        come from many independent blocks without generating much more than they are."""
        rng = np.random.default_rng(seed)
        first, last = self.start // BLOCK_DOCS, -(-self.stop // BLOCK_DOCS)
        picks = rng.permutation(np.arange(first, last))[: max(1, -(-n // SAMPLE_ROWS_PER_BLOCK))]
        parts, have = [], 0
        for b in sorted(picks.tolist()):
            lo = max(self.start, b * BLOCK_DOCS)
            hi = min(self.stop, (b + 1) * BLOCK_DOCS)
            base = self.corpus.offsets[b * BLOCK_DOCS]
            tokens = self.corpus.block(b)[self.corpus.offsets[lo] - base : self.corpus.offsets[hi] - base]
            parts.append(tokens)
            have += len(tokens)
        pool = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
        take = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
        return pool[np.sort(take)]
