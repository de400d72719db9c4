"""Stages 1-3 of a query: query-centroid scores and probing, then the candidates ranked by centroid interaction.

  1. Q C^T, the query-centroid scores, kept centroid-major as int16 (1/SCORE_SCALE steps), and in
     the same pass the top `nprobe` centroids of each query token (and, with probe_delta, the close calls).
  2. Probe: the union of those centroids' inverted lists gives the candidates; where they are more than
     `prefilter` per survivor (engine/_settings.py), the best by centroid interaction over their probed
     centroids only (a lower bound of the full one, from the pairs probing listed).
  3. Centroid interaction: each candidate scored by MaxSim with its tokens replaced by their centroids,
     computed from the document's *distinct* centroid ids; the best max(k, ndocs) survive.

The C kernels (engine/_native.py) and the numpy code here give the same probe pairs and scores.
"""

from __future__ import annotations

import numpy as np

from . import _native as native
from ._corpus import Corpus
from ._filter import Allowed
from ._maxsim import aligned_empty, centroid_interaction, int8_query, score_table_i8, top_k, top_k_set
from ._parallel import Workers
from ._rows import RowReader
from ._settings import MAX_PROBE, SearchSettings

CENTROID_BLOCK = 4096  # centroids per piece of the query-centroid product (pieces run in parallel)
SCORE_SCALE = 1 << 14  # query-centroid scores are kept as int16 multiples of 1/16384 (|score| <= ~1)


class Prober:
    """Stages 1-3 over one corpus: score_and_probe, then candidates."""

    def __init__(self, corpus: Corpus, workers: Workers, rows: RowReader):
        self.corpus, self.workers, self.rows = corpus, workers, rows
        self.scale = score_scale(corpus.centroids)

    def score_and_probe(self, Q: np.ndarray, settings: SearchSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Query-centroid scores and the centroids each query token probes, in one pass over C.

        Returns (table, tokens, cents): table is (K, q) int16, row c holding
        <q_i, c> x scale truncated toward zero for every query token i; (tokens[j], cents[j])
        are the probe pairs: each token's top nprobe centroids, and with probe_delta
        those within it of the token's best (at most MAX_PROBE). Computed in blocks of
        CENTROID_BLOCK centroids spread over the query's threads: each block's product,
        its quantized transpose, and its per-token best; then the blocks' bests merge.

        The product is of int8 copies (each centroid and query token scaled to 127 at its largest
        |value|; engine/_maxsim.py score_table_i8): exact in integers, and off from the float
        product by ~1e-3 a score, with the same search loss (BENCHMARKS 3.4). Then int16 at
        1/SCORE_SCALE (truncated): unit queries and unit centroids give |score| <= 1; exact
        re-ranking never uses it. Centroid-major, so centroid interaction gathers one 64-byte
        row per id; half the bytes of float32, and no (q, K) copy is kept.
        """
        K, q = len(self.corpus.centroids), len(Q)
        table = aligned_empty((K, q), np.int16)
        blocks = range(0, K, CENTROID_BLOCK)
        n = min(settings.nprobe, K)
        delta = None if settings.probe_delta is None else int(round(settings.probe_delta * self.scale))

        cent = self.corpus.centroids_i8
        query = int8_query(Q * np.float32(self.scale), cent[0].shape[1])

        def one(i: int) -> tuple:
            a = blocks[i]
            rows_out = table[a : a + CENTROID_BLOCK]
            score_table_i8(tuple(x[a : a + CENTROID_BLOCK] for x in cent), query, rows_out)  # (b, q), truncated
            return probe_block(rows_out, a, n, delta)

        parts = self.workers.map(one, len(blocks))
        rows, cols, vals = (np.concatenate([p[0][j] for p in parts]) for j in range(3))
        tokens, cents = best_per_row(rows, cols, vals, q, n)
        if delta is not None:
            rows, cols, vals = (np.concatenate([p[1][j] for p in parts]) for j in range(3))
            best = np.full(q, np.iinfo(np.int16).min, dtype=np.int64)
            wide = vals.astype(np.int64)
            np.maximum.at(best, rows, wide)
            close = wide >= best[rows] - delta
            t2, c2 = best_per_row(rows[close], cols[close], vals[close], q, MAX_PROBE)
            tokens, cents = np.concatenate([tokens, t2]), np.concatenate([cents, c2])
        return table, tokens, cents

    def candidates(self, table: np.ndarray, probed: np.ndarray, k: int, allowed: Allowed | None,
                   settings: SearchSettings) -> tuple[np.ndarray, np.ndarray]:
        """Stages 2-3: the documents of the probed inverted lists, ranked by centroid interaction.

        table is (K, q): query-centroid scores (int16, see score_and_probe); probed
        the centroids the query's tokens probe. Each candidate's score is MaxSim with
        its tokens replaced by their centroids, computed from its distinct centroid ids
        (the document-major copy of the inverted lists). Returns the best
        max(k, ndocs) candidates, best first: the survivors, and their centroid-interaction
        scores (in score units). allowed (a subset or metadata filter, engine/_filter.py): only
        those documents; all of them are scored when they are no more than the probed candidates.
        """
        c = self.corpus
        survivors = settings.survivors(k)
        if allowed is not None and len(allowed) <= survivors:
            docs = allowed.docs  # a small subset skips probing: all of it is scored
        else:
            pair_docs, pair_cents = c.probed_pairs_by_doc(np.unique(probed))
            first = np.flatnonzero(np.r_[True, pair_docs[1:] != pair_docs[:-1]]) if len(pair_docs) else \
                np.zeros(0, np.int64)  # where each candidate's pairs start
            counts = np.diff(np.r_[first, len(pair_docs)])
            docs = pair_docs[first]  # the distinct candidates, ascending
            live = ~c.deleted[docs]
            if allowed is not None and len(allowed) <= live.sum():
                docs, first = allowed.docs, None  # score every admitted document: no more work (engine/_filter.py)
            else:
                if allowed is not None:
                    live &= allowed.mask[docs]
                docs, first, counts = docs[live], first[live], counts[live]
            keep = len(docs) if settings.prefilter is None else settings.prefilter * survivors
            if first is not None and (len(docs) > keep or self.rows.reading_ahead) and len(docs):
                # centroid interaction over the probed pairs only: a lower bound of the full one
                bound = centroid_interaction(table, pair_cents, first, counts, self.workers)
                if self.rows.reading_ahead:
                    self._read_ahead(docs[top_k(bound, 2 * min(survivors, settings.wave))])
                if len(docs) > keep:  # the same `keep` as top_k's, in document order (docs is ascending)
                    docs = docs[top_k_set(bound, keep)]
        if len(docs) == 0:
            return docs, np.zeros(0, dtype=np.float32)
        starts, lens = c.distinct_code_spans(docs)
        ci = centroid_interaction(table, c.doc_codes, starts, lens, self.workers)
        best = top_k(ci, survivors)
        return docs[best], ci[best] / np.float32(self.scale)

    def _read_ahead(self, likely: np.ndarray) -> None:
        """Start reading the likely survivors before centroid interaction has picked them: the best
        2 x the first wave's survivors by centroid interaction over their probed centroids alone, so
        the reads overlap the full centroid interaction (the row cache must hold 2 x survivors' rows
        for that; BENCHMARKS 2.0b)."""
        self.rows.read_ahead(likely)


def score_scale(centroids: np.ndarray) -> float:
    """SCORE_SCALE, unless a centroid is so long that a score could leave int16 (queries are unit
    or shorter, so |score| <= the longest centroid's norm; int16 holds 2 x SCORE_SCALE). The
    stores' centroids are unit (norm 1 +- 3e-4): the scale stays SCORE_SCALE for them."""
    longest = float(np.sqrt(np.einsum("ij,ij->i", centroids, centroids).max(initial=0.0)))
    return float(SCORE_SCALE) if longest < 1.99 else SCORE_SCALE * 1.99 / longest


def probe_block(block: np.ndarray, first: int, n: int, delta: int | None) -> tuple:
    """One centroid block's probe candidates: ((tokens, centroids, values) of each token's top n, and with
    delta those within it of the token's best in the block, at most MAX_PROBE, or None). block is (b, q),
    centroid-major, its first row centroid `first`. The C kernel makes one pass over it with no transposed
    copy; the numpy path (top_columns, within) gives the same pairs (ties: the lower centroid)."""
    b, q = block.shape
    n = min(n, b)
    if native.top_rows is None:
        quant = np.ascontiguousarray(block.T)  # (q, b): per-token rows
        top = top_columns(quant, n)  # (q, n) block-local columns
        rows = np.repeat(np.arange(q), n)
        found = (rows, top.ravel() + first, quant[rows, top.ravel()])
        if delta is None:
            return found, None
        r, c = within(quant, delta, MAX_PROBE)
        return found, (r, c + first, quant[r, c])
    cols, vals = native.top_rows(block, n)  # (q, n): best first
    found = (np.repeat(np.arange(q), n), cols.ravel() + first, vals.ravel())
    if delta is None:
        return found, None
    # a second pass keeps what lies within delta of each token's best: a floor, so it inserts almost nothing
    floor = np.maximum(vals[:, 0].astype(np.int64) - delta, np.iinfo(np.int16).min).astype(np.int16)
    cols, vals = native.top_rows(block, min(MAX_PROBE, b), floor)
    r, c = np.nonzero(cols >= 0)
    return found, (r, cols[r, c] + first, vals[r, c])


def best_per_row(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, n: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Of (row, column, value) candidates, the n best of each row (ties: lower column)."""
    order = np.lexsort((cols, -vals.astype(np.int64), rows))
    counts = np.bincount(rows, minlength=n_rows)
    rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = order[rank < n]
    return rows[keep], cols[keep]


def within(S: np.ndarray, delta: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of entries within `delta` of their row's best, at most `cap` (the best) per row.

    One compare and a flat nonzero over the block, then a sort of the few hits only.
    """
    best = S.max(axis=1).astype(np.int64)
    floor = np.maximum(best - delta, np.iinfo(S.dtype).min if np.issubdtype(S.dtype, np.integer) else -np.inf)
    hits = np.flatnonzero(S >= floor.astype(S.dtype)[:, None])
    rows, cols = np.divmod(hits, S.shape[1])
    counts = np.bincount(rows, minlength=len(S))
    if counts.max(initial=0) <= cap:
        return rows, cols
    order = np.lexsort((-S[rows, cols].astype(np.int64), rows))  # by row, best first
    rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = order[rank < cap]
    return rows[keep], cols[keep]


def top_columns(S: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the n largest entries of each row of S (any order).

    For the small n of probing, n argmax passes over a copy beat argpartition; the
    caller passes one block of CENTROID_BLOCK columns, so the copy stays small.
    """
    if n > 8:
        return np.argpartition(S, S.shape[1] - n, axis=1)[:, S.shape[1] - n :]
    work = S.copy()
    low = np.iinfo(S.dtype).min if np.issubdtype(S.dtype, np.integer) else -np.inf
    rows = np.arange(S.shape[0])
    out = np.empty((S.shape[0], n), dtype=np.int64)
    for j in range(n):
        out[:, j] = work.argmax(axis=1)
        work[rows, out[:, j]] = low
    return out
