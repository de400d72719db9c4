"""Stages 4-5 of a query: residual interaction over the survivors in waves, a stop rule, then exact MaxSim.

  4. Residual interaction: the survivors' token rows are read (slices of half a wave over
     the query's threads) and each survivor is scored by MaxSim with every token's residual scored from
     per-query lookup tables (one int16 row per residual byte), never decoded: within rounding, MaxSim
     over the un-normalized decoded tokens. Waves of survivors are scored until stop() expects none of
     the rest to reach the best of them exact MaxSim re-ranks.
  5. The best max(EXACT_DOCS, 2k) of those are decoded and ranked by exact MaxSim (their rows are
     already in memory), STREAM_CHUNK documents at a time; top k.

Rows come from engine/_rows.py, whichever the placement; which documents are scored, and their order,
never depend on timing, placement or the number of threads: same scores, same ties.
"""

from __future__ import annotations

import math

import numpy as np

from ._corpus import Corpus
from ._maxsim import maxsim_concat, maxsim_torch, residual_interaction, residual_lut, top_k
from ._parallel import Workers
from ._rows import RowReader, RowsOf, select_docs, sliced

# stop() ends the waves once fewer than STOP_EXPECTED of the unscored survivors are expected to reach the best
# max(EXACT_DOCS, 2k) that exact MaxSim re-ranks
# (docs/BENCHMARKS.md C21: chosen on three synthetic stores of other seeds and shapes and on scifact)
STOP_EXPECTED = 0.03
EXACT_DOCS = 32  # the best of residual interaction that exact MaxSim re-ranks (at least 2k)
PREFETCH_SLICE = 16  # the step with prefetch on, so steps whose rows have arrived can go first
READY_WINDOW = 16  # pending exact-MaxSim chunks checked for arrived rows before taking the next one
STREAM_CHUNK = 8  # survivors scored per exact-MaxSim step (a larger step held more heap, no faster)
# A wave (SearchSettings.wave survivors, fixed per store so results never depend on the thread count) is two
# slices, each read and scored as one step (steps spread over the query's threads), and slices are whole
# prefetch steps: then the survivors scored so far are exactly the first ones in centroid-interaction order,
# the last wave's the last `wave` of them (stop() relies on both).

Hits = list[tuple[str, float]]


class Reranker:
    """Stages 4-5 over one corpus: rerank(survivors) -> top-k hits with exact MaxSim scores."""

    def __init__(self, corpus: Corpus, workers: Workers, rows: RowReader, score_scale: float, device: str):
        self.corpus, self.workers, self.rows, self.device = corpus, workers, rows, device
        self.score_scale = score_scale
        self.byte_tables = np.ascontiguousarray(corpus.codec.byte_tables(), dtype=np.float32)

    def rerank(self, Q: np.ndarray, table: np.ndarray, final: np.ndarray, ci: np.ndarray, k: int,
               wave: int) -> tuple[Hits, int]:
        """(top-k hits, survivors scored): residual interaction over the survivors, then exact MaxSim over
        the best of them.

        final: the survivors, best first by centroid interaction, whose scores are ci. They are
        scored in waves of `wave` (engine/_settings.py) until stop() expects none of the
        rest to reach the best n_exact = max(EXACT_DOCS, 2k), or none are left; exact MaxSim
        then scores those n_exact.
        A wave is cut into two slices, each read in document order (no
        reordering copy) and spread over the query's threads; with rows read ahead, in steps of
        PREFETCH_SLICE, those whose rows have all arrived first. Each step is scored by residual
        interaction (engine/_maxsim.py: centroid score + the residual's score from per-query
        lookup tables, no decoding), and the rows of its best are kept so the best n_exact
        overall are decoded and scored exactly without reading them again.
        """
        n_exact = max(EXACT_DOCS, 2 * k)
        if len(final) <= n_exact:
            if len(final) == 0:
                return [], 0
            return self.exact_chunked(Q, final, k, *self.rows.rows_of(final)), len(final)
        slice_ = wave // 2
        if slice_ < PREFETCH_SLICE or slice_ % PREFETCH_SLICE:
            raise ValueError(f"a wave is two slices of whole {PREFETCH_SLICE}-document prefetch steps, got {wave}")
        at = np.concatenate([np.argsort(final[a : a + slice_], kind="stable") + a
                             for a in range(0, len(final), slice_)])  # docs[j] = final[at[j]]: slices in doc order
        docs = final[at]
        ahead = self.rows.reading_ahead
        step = PREFETCH_SLICE if ahead else slice_
        lut = residual_lut(Q, self.byte_tables)
        scores = np.full(len(docs), -np.inf, dtype=np.float32)
        kept: list = []

        def one(a: int) -> tuple:
            codes, res, lens = self.rows.rows(docs[a : a + step])
            part = scores[a : a + len(lens)]
            part[...] = residual_interaction(Q, table, self.score_scale, lut, self.corpus.codec, codes, res, lens)
            # only the step's own best n_exact can be among the overall best n_exact: keep just their rows
            local = np.sort(top_k(part, n_exact))
            return (a + local, *select_docs(codes, res, lens, local))

        done = 0
        while done < len(docs):
            end = min(len(docs), done + wave)
            cuts = list(range(done, end, step))
            if ahead:  # small steps, those read ahead already first
                cuts.sort(key=lambda a: not self.rows.ready(docs[a : a + step]))
            if end < len(docs):  # the next wave, while this one is scored
                self.rows.read_ahead(final[end : end + wave])
            kept += self.workers.map(lambda j: one(cuts[j]), len(cuts))
            done = end
            if done < len(docs) and stop(scores[:done], ci[at[:done]], ci[done:], n_exact, wave):
                break
            # going on: the kernel reads all of the next wave at once (hints are only given for rows that will
            # be read, so a stop never wastes the device's time on a wave nobody scores)
            self.rows.hint(docs[done : min(len(docs), done + wave)])
        kept.sort(key=lambda p: int(p[0][0]))  # by position: ready-first order may have scored them out of order
        best = np.sort(top_k(scores[:done], n_exact))  # positions in docs, ascending
        pos = np.concatenate([p[0] for p in kept])  # ascending: steps in order, each sorted
        rows = select_docs(*(np.concatenate([p[j] for p in kept]) for j in (1, 2, 3)), np.searchsorted(pos, best))
        return self.exact_chunked(Q, docs[best], k, sliced(*rows)), done

    def exact_chunked(self, Q: np.ndarray, final: np.ndarray, k: int, rows_of: RowsOf, ready=None) -> Hits:
        """Exact MaxSim over `final`, STREAM_CHUNK documents at a time; top k.

        rows_of(docs, a) gives the (codes, residuals, lengths) of docs = final[a : a + step].
        Chunks whose rows have all arrived (ready) are scored first, while the prefetcher
        keeps reading the others. Which documents form a chunk is fixed by position, never
        by timing, so a document's score is always computed the same way: every placement,
        and a batch or a single query, give bit-identical scores.
        """
        scores = np.empty(len(final), dtype=np.float32)
        step = STREAM_CHUNK if self.device == "cpu" else max(len(final), 1)  # a GPU wants one big batch
        pending = list(range(0, len(final), step))
        if self.workers.threads > 1 and len(pending) > 1:  # chunks in parallel: those read already first
            if ready:
                pending.sort(key=lambda a: not ready(final[a : a + step]))

            def one(i: int) -> None:
                a = pending[i]
                scores[a : a + step] = self.exact(Q, *rows_of(final[a : a + step], a))

            self.workers.map(one, len(pending))
            pending = []
        pending.reverse()  # the next chunk is last: taking one near the end costs O(1), not O(chunks)
        while pending:
            # of the next READY_WINDOW chunks, one whose rows have arrived goes first (else the next one)
            i = len(pending) - 1
            if ready:
                i = next((j for j in range(len(pending) - 1, max(len(pending) - READY_WINDOW, 0) - 1, -1)
                          if ready(final[pending[j] : pending[j] + step])), i)
            a = pending.pop(i)
            scores[a : a + step] = self.exact(Q, *rows_of(final[a : a + step], a))
        return [(self.corpus.doc_id(int(final[i])), float(scores[i])) for i in top_k(scores, k)]

    def exact(self, Q: np.ndarray, codes: np.ndarray, residuals: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Exact MaxSim of Q against the documents' decoded tokens."""
        tokens = self.corpus.codec.decode(codes, residuals)
        if self.device == "cpu":
            return maxsim_concat(Q, tokens, lens)
        return maxsim_torch(Q, tokens, lens, self.device)


def stop(scores: np.ndarray, ci: np.ndarray, rest_ci: np.ndarray, n_best: int, wave: int) -> bool:
    """Whether to stop scoring survivors. scores: residual interaction's scores of those scored so far, the
    last wave (of `wave`) last; ci: their centroid interaction's; rest_ci: the unscored survivors' (best first).

    A survivor's residual interaction is its centroid interaction plus what its residuals add (its gain).
    The gains of the last wave, the nearest in centroid-interaction order to the survivors not scored,
    give the gain's mean and spread, taken as normal; then the expected number of unscored survivors whose
    centroid interaction plus a gain would pass the n_best-th best score so far is a sum of normal tails.
    Stop when it is under STOP_EXPECTED. The caller passes n_best = the number exact MaxSim re-ranks
    (max(EXACT_DOCS, 2k)), not k: residual interaction only estimates exact MaxSim, so what must not be
    missed is a survivor that would enter that set (against the k-th best a k = 1 search lost its best). The work so adapts to the query and the store: where centroid
    interaction already settles the top k (a clear gap to the rest) one wave is scored, where it cannot
    (a flat tail of near-ties with a wide gain) the waves go on. An estimate, not a bound:
    docs/BENCHMARKS.md C21 measures its search loss."""
    if len(scores) < n_best:
        return False
    gains = (scores - ci)[-wave:].astype(np.float64)
    mean, spread = float(gains.mean()), max(float(gains.std()), 1e-6)
    nth_best = float(np.partition(scores, len(scores) - n_best)[len(scores) - n_best])
    return expected_passing(rest_ci.astype(np.float64) + mean, nth_best, spread) < STOP_EXPECTED


def expected_passing(centres: np.ndarray, threshold: float, spread: float) -> float:
    """Sum over centres of P(centre + N(0, spread^2) > threshold): normal tails by erfc (numpy has none;
    scipy's would be a dependency on the query path for one function). Only centres within 9 spreads below
    the threshold can add more than 1e-19, so only those are evaluated."""
    near = centres[centres > threshold - 9.0 * spread]
    if len(near) == 0:
        return 0.0
    return float(0.5 * erfc((threshold - near) / (spread * math.sqrt(2.0))).sum())


def erfc(x: np.ndarray) -> np.ndarray:
    """The complementary error function, elementwise, to a relative error under 1.2e-7 (Numerical Recipes'
    Chebyshev fit, erfcc)."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
        0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    y = t * np.exp(poly)
    return np.where(x >= 0, y, 2.0 - y)
