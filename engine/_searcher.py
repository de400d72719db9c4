"""The Searcher: PLAID-style candidate generation, residual interaction, exact MaxSim re-ranking.

Per query (q tokens) the pipeline is:
  1. Q C^T, the query-centroid scores, kept centroid-major as int16 (1/16384
     steps), and in the same pass the top `nprobe` centroids of each query token.
  2. Probe: the union of those centroids' inverted lists gives the candidates.
  3. Centroid interaction: each candidate scored by MaxSim with its tokens
     replaced by their centroids, computed from the document's *distinct*
     centroid ids (a resident document-major copy of the inverted lists, ~1/4
     of the per-token ids); the best max(k, ndocs) survive.
  4. Residual interaction: the survivors' token rows are read (slices of
     RESIDUAL_SLICE documents over the query's threads) and each survivor is
     scored by MaxSim with every token's residual scored from per-query lookup
     tables (one int16 row per residual byte), never decoded: within rounding,
     MaxSim over the un-normalized decoded tokens.
  5. The best max(EXACT_DOCS, 2k) of those are decoded and ranked by exact
     MaxSim (their rows are already in memory), 8 documents at a time; top k.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lodestore.store import Store, as_numpy

from ._budget import AUTO_CACHE, AUTO_CACHE_NO_PREFETCH, Placement, parse_size, place
from ._corpus import Corpus
from . import _native as native
from ._maxsim import (aligned_empty, centroid_interaction, int8_query, maxsim_concat, maxsim_torch, ramp,
                      residual_interaction, residual_lut, score_table_i8, top_k)
from ._parallel import Workers, default_threads
from ._prefetch import Prefetcher

DEFAULT_BUDGET = "auto"  # the index; + a 4 MB row cache with prefetch on (docs/BENCHMARKS.md 2.0b)
DEFAULT_NPROBE = 8
MAX_PROBE = 32  # most centroids one query token probes when probe_delta widens its probing
# Search settings by store size, chosen when a Searcher opens (docs/BENCHMARKS.md 3.2, 3.3). Measured recall@10
# against exhaustive search over the store (search loss): 8 probes plus the close calls (probe_delta 0.1:
# every centroid within 0.1 of a token's best) take 1.2e6 from 0.980 to 0.990 (200 queries) for x1.2
# latency, and at 5e6-1e7 tokens, where almost every miss was a document never probed, 0.965 to 0.993.
# ndocs, how many survivors of centroid interaction residual interaction may score (3.3, 3.4): it scores them
# in waves in centroid-interaction order and stops once the next could not reach the best 32 (_stop). Below 4e6
# tokens at most 1024: scifact's real vectors need ~1000 for search loss 0.995 (centroid interaction ranks
# documents exact MaxSim keeps as deep as ~1000th there), and the stop ends most queries far earlier (mean
# ~700 on scifact, ~450 on the 1.2e6 bundle). From 4e6 on 256, one wave (1e7: 0.995).
LARGE_STORE_TOKENS = 4_000_000
DEFAULT_NDOCS = 1024
LARGE_NDOCS = 256
FIRST_WAVE = 256  # survivors residual interaction scores before the first stop test (2 slices)
WAVE = 256  # survivors scored between stop tests: fixed, so results never depend on the thread count
STOP_MARGIN = 0.5  # _stop's allowance over the largest gain seen (BENCHMARKS 3.4)
DEFAULT_PROBE_DELTA = 0.1
EXACT_DOCS = 32  # the best of residual interaction that exact MaxSim re-ranks (at least 2k)
RESIDUAL_SLICE = 128  # survivors read and scored by residual interaction per step (steps spread over threads)
PREFETCH_SLICE = 16  # the step with prefetch on, so steps whose rows have arrived can go first
STREAM_CHUNK = 8  # survivors scored per exact-MaxSim step: 16 held 4-6 MB more heap with 2 threads, no faster
# waves are whole slices and slices whole prefetch steps: then the survivors scored so far are exactly the first
# ones in centroid-interaction order, and the next one's score bounds every later one's (_stop relies on it)
assert FIRST_WAVE % RESIDUAL_SLICE == 0 and WAVE % RESIDUAL_SLICE == 0 and RESIDUAL_SLICE % PREFETCH_SLICE == 0
CENTROID_BLOCK = 4096  # centroids per piece of the query-centroid product (pieces run in parallel)
BATCH_TOKENS = 64  # query tokens of a batch sharing one score table: (K, 64) int16 is 4 MB at K=32,768
SCORE_SCALE = 1 << 14  # query-centroid scores are kept as int16 multiples of 1/16384 (|score| <= ~1)

Hits = list[tuple[str, float]]


class Searcher:
    """Answers MaxSim queries over a store within a memory budget.

    memory_budget: bytes, a size string ("64MB"), "auto" (the default: what
    candidate generation needs, i.e. the centroids, inverted lists and each
    document's distinct centroid ids; token rows and their per-token ids are
    read for the survivors; with prefetch on, plus a 4 MB row cache), or "all"
    to keep everything in RAM. What a budget leaves beyond the index (and the
    codes) is the prefetch threads' row cache; without prefetch rows are read
    through and the OS page cache serves repeats.
    nprobe: centroids probed per query token. ndocs (at least k): at most how
    many candidates centroid interaction passes on to residual interaction,
    best first; their rows are read and scored in waves of 256, stopping once
    the next could not reach the best max(EXACT_DOCS, 2k), which are then
    scored exactly (stats()["scored_per_query"] says how many were scored).
    probe_delta: also probe every centroid whose score is within this of the
    token's best (at most MAX_PROBE a token): tokens whose best centroids are
    close calls probe more of them; None turns it off. Defaults: nprobe 8,
    probe_delta 0.1; ndocs DEFAULT_NDOCS below LARGE_STORE_TOKENS (4e6) tokens,
    LARGE_NDOCS from there on (decided when the Searcher opens; see stats()).
    device: "cpu" (numpy, no torch import) or a torch device such as "cuda" for
    the re-ranking step. prefetch: background threads read the likely
    survivors' rows while centroid interaction runs (ESPN-style). Measured
    (docs/BENCHMARKS.md 2.0b): hit rate 0.96-0.99 warm, ~0.7 cold; with two
    query threads it cost p50 (x1.6-2 warm, x1.04-1.2 cold) for twice the bytes
    read and 15-20 MB more RSS, so it is off by default. It can pay where reads
    block for long and cores are spare.
    threads: threads one query's work is spread over (query-centroid product,
    centroid interaction, re-ranking chunks); default 2 where the process may
    use 2 cores. Results do not depend on it.
    """

    def __init__(self, store_or_path: Store | str | os.PathLike, memory_budget: int | str | None = DEFAULT_BUDGET,
                 nprobe: int | None = None, ndocs: int | None = None, *, device: str = "cpu",
                 prefetch: bool = False, prefetch_threads: int = 2, threads: int | None = None,
                 probe_delta: float | None | str = "auto"):
        if nprobe is not None and (not isinstance(nprobe, (int, np.integer)) or isinstance(nprobe, bool) or nprobe <= 0) \
                or ndocs is not None and (not isinstance(ndocs, (int, np.integer)) or isinstance(ndocs, bool) or ndocs <= 0):
            raise ValueError(f"nprobe and ndocs must be positive integers, got nprobe={nprobe!r}, ndocs={ndocs!r}")
        if not (isinstance(probe_delta, str) and probe_delta == "auto") and probe_delta is not None and not (
                isinstance(probe_delta, (int, float)) and not isinstance(probe_delta, bool) and 0 <= probe_delta <= 2):
            raise ValueError(f"probe_delta must be 'auto', None or a score difference in [0, 2], got {probe_delta!r}")
        workers = Workers(default_threads() if threads is None else threads)  # checked before anything is opened
        self._own_store = not isinstance(store_or_path, Store)
        self.store = Store.open(Path(store_or_path)) if self._own_store else store_or_path
        if self.store.manifest.codec is None or not self.store.manifest.segments:
            if self._own_store:
                self.store.close()
            workers.close()
            raise ValueError(f"{self.store.root}: the store is empty; add documents before searching")
        large = sum(seg.tokens for seg in self.store.manifest.segments) >= LARGE_STORE_TOKENS
        self.nprobe = DEFAULT_NPROBE if nprobe is None else int(nprobe)
        self.ndocs = (LARGE_NDOCS if large else DEFAULT_NDOCS) if ndocs is None else int(ndocs)
        if isinstance(probe_delta, str):
            probe_delta = DEFAULT_PROBE_DELTA
        self.probe_delta = probe_delta
        self.device = device
        self.prefetch = bool(prefetch)
        self.workers = workers
        self.generation = self.store.generation
        self._memory_budget, self._prefetch_threads = memory_budget, prefetch_threads
        try:
            self._use(*self._load(self.store))
        except BaseException:  # e.g. a corrupt chunk: leave nothing open behind
            if self._own_store:
                self.store.close()
            self.workers.close()
            raise
        _release_free_memory()
        self.queries = 0
        self._scored = 0  # survivors residual interaction scored, over all queries (stats)
        self.query_time_s = 0.0

    def _use(self, corpus: Corpus, placement: Placement) -> None:
        """Search `corpus` from now on: its placement, a prefetcher over it, its score scale."""
        self.corpus, self.placement = corpus, placement
        self.prefetcher = Prefetcher(corpus.read_rows, placement.cache_bytes or (1 << 20), threads=self._prefetch_threads,
                                     read_concat=corpus.read_concat)
        self._score_scale = _score_scale(corpus.centroids)
        self._byte_tables = np.ascontiguousarray(corpus.codec.byte_tables(), dtype=np.float32)

    def _load(self, store: Store) -> tuple[Corpus, Placement]:
        """The resident corpus of `store`'s generation (holding a lease on it), placed within the budget."""
        c = Corpus(store)
        try:
            store.projection  # load (and check) a dimension-reduction matrix now, not at the first query
            tokens = c.tokens()
            placement = place(
                parse_size(self._memory_budget), c.index_bytes(), tokens * c.codec.code_dtype.itemsize,
                tokens * c.codec.residual_bytes, auto_cache=AUTO_CACHE if self.prefetch else AUTO_CACHE_NO_PREFETCH,
            )
            if placement.codes_resident:
                c.load_codes()
            if placement.residuals_resident:
                c.load_residuals()
        except BaseException:
            c.close()
            raise
        return c, placement

    # ------------------------------------------------------------------ public API
    def refresh(self) -> bool:
        """Move to the newest committed generation; True when it changed.

        Until then the Searcher answers from the generation it opened, whatever writers
        commit meanwhile (its lease keeps that generation's files on disk). Refreshing
        builds the new generation's index, then releases the old one (and its lease, so
        a writer may collect the old files): for that moment both indexes are in memory,
        and the row cache starts empty. Do not call it concurrently with search()
        on the same Searcher. Raises ValueError, keeping the old generation, when the
        newest one has no documents.
        """
        if self.store.writable:  # a writer's own handle is the newest generation (one writer at a time)
            store, own = self.store, False
        else:
            store, own = Store.open(self.store.root), True
        try:
            if store.generation == self.generation:
                if own:
                    store.close()
                return False
            if store.manifest.codec is None or not store.manifest.segments:
                raise ValueError(f"{store.root}: generation {store.generation} has no documents; keeping "
                                 f"generation {self.generation}")
            corpus, placement = self._load(store)
        except BaseException:
            if own:
                store.close()
            raise
        old_corpus, old_prefetcher, old_store = self.corpus, self.prefetcher, self.store if self._own_store else None
        self.store, self._own_store = store, own
        self._use(corpus, placement)
        self.generation = store.generation
        old_prefetcher.close()
        old_corpus.close()
        if old_store is not None:
            old_store.close()
        _release_free_memory()
        return True

    def search(self, query: Any, k: int = 10, subset: Sequence[str] | None = None) -> Hits | list[Hits]:
        """Top-k (id, score) by exact MaxSim, best first.

        query: (q_len, dim) -> one list of hits; (B, q_len, dim) or a list of
        (q_len_i, dim) -> one list per query. subset: only these document ids
        may be returned.
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        single, queries = self._prepare(query)
        if isinstance(subset, str):
            raise ValueError("subset must be a collection of document ids, not one string")
        allowed = self.corpus.lookup(list(subset)) if subset is not None else None
        t0 = time.perf_counter()
        results = self._search_batch(queries, int(k), allowed)
        self.query_time_s += time.perf_counter() - t0
        self.queries += len(queries)
        return results[0] if single else results

    def stats(self) -> dict[str, Any]:
        """Counters since open (or reset_stats) and what is resident.

        hits: documents whose rows were in the row cache when re-ranking needed
        them (read ahead by the prefetch threads, or kept from earlier queries);
        waited: in flight in a prefetch thread, so re-ranking waited; misses:
        read when needed. hit_rate = hits / (hits + waited + misses).
        bytes_read / read_calls: what the store files saw; io_wait_s: time the
        query's threads spent reading or waiting for rows (summed over threads,
        so it can exceed wall time). resident_bytes: index + resident
        arrays + cache + residual interaction's byte tables (float32, 0.1-0.4 MB);
        placement: what the memory budget chose.
        """
        p = self.prefetcher
        requested = p.hits + p.waited + p.misses
        c = self.corpus
        resident = c.index_bytes() + p.resident_bytes + self._byte_tables.nbytes
        resident += c.codes.nbytes if c.codes is not None else 0
        resident += c.residuals.nbytes if c.residuals is not None else 0
        return {
            "generation": self.generation,
            "queries": self.queries,
            "hits": p.hits,
            "waited": p.waited,
            "misses": p.misses,
            "hit_rate": p.hits / requested if requested else 1.0,
            "bytes_read": p.bytes_read,
            "read_calls": p.read_calls,
            "io_wait_s": p.io_wait_s,
            "resident_bytes": resident,
            "cache_bytes": p.resident_bytes,
            "placement": self.placement.to_dict(),
            "prefetch": self.prefetch,
            "nprobe": self.nprobe,
            "ndocs": self.ndocs,
            "scored_per_query": self._scored / self.queries if self.queries else 0.0,
            "probe_delta": self.probe_delta,
            "threads": self.workers.threads,
        }

    def reset_stats(self) -> None:
        self.prefetcher.reset_stats()
        self.queries = 0
        self._scored = 0
        self.query_time_s = 0.0

    def close(self) -> None:
        self.prefetcher.close()
        self.workers.close()
        self.corpus.close()
        if self._own_store:
            self.store.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ pipeline
    def _prepare(self, query: Any) -> tuple[bool, list[np.ndarray]]:
        dim = self.store.input_dim
        if isinstance(query, (list, tuple)):
            if not query:
                raise ValueError("empty list of queries")
            qs = [as_numpy(q) for q in query]
            single = False
        else:
            a = as_numpy(query)
            if a.ndim == 2:
                qs, single = [a], True
            elif a.ndim == 3:
                if len(a) == 0:
                    raise ValueError("empty batch of queries")
                qs, single = list(a), False
            else:
                raise ValueError(f"query must be (q_len, {dim}) or (batch, q_len, {dim}), got shape {a.shape}")
        return single, check_queries(self.store, qs)

    def _search_batch(self, queries: list[np.ndarray], k: int, allowed: np.ndarray | None) -> list[Hits]:
        with _blas_single_thread():
            return self._search_batch_inner(queries, k, allowed)

    def _search_batch_inner(self, queries: list[np.ndarray], k: int, allowed: np.ndarray | None) -> list[Hits]:
        out: list[Hits] = []
        group: list[np.ndarray] = []
        for q in queries:  # groups of up to BATCH_TOKENS query tokens share one pass over the centroids
            if group and sum(len(g) for g in group) + len(q) > BATCH_TOKENS:
                out += self._search_group(group, k, allowed)
                group = []
            group.append(q)
        return out + self._search_group(group, k, allowed)

    def _search_group(self, queries: list[np.ndarray], k: int, allowed: np.ndarray | None) -> list[Hits]:
        bounds = np.concatenate([[0], np.cumsum([len(q) for q in queries])])
        table, tokens, probed = self._score_and_probe(np.concatenate(queries))  # once per group
        cands, tables = [], []  # candidates for every query first, so all reads are in flight before any re-ranking
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            mine = (tokens >= a) & (tokens < b)
            if len(bounds) == 2:
                own = table
            else:  # its own rows of 64 B to gather, on cache lines as the whole table's
                own = aligned_empty((len(table), b - a), np.int16)
                own[...] = table[:, a:b]
            cands.append(self._candidates(own, probed[mine], k, allowed))
            tables.append(own)
        del table
        if self._reading_ahead():
            for cand, _ in cands:  # the first wave, best first (those not read ahead already); _rerank asks for the next
                self.prefetcher.prefetch(cand[:FIRST_WAVE])
        return [self._rerank(q, own, cand, ci, k) for q, own, (cand, ci) in zip(queries, tables, cands)]

    def _score_and_probe(self, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Query-centroid scores and the centroids each query token probes, in one pass over C.

        Returns (table, tokens, cents): table is (K, q) int16, row c holding
        <q_i, c> x SCORE_SCALE truncated toward zero for every query token i; (tokens[j], cents[j])
        are the probe pairs: each token's top nprobe centroids, and with probe_delta
        those within it of the token's best (at most MAX_PROBE). Computed in blocks of
        CENTROID_BLOCK centroids spread over the query's threads: each block's product,
        its quantized transpose, and its per-token best; then the blocks' bests merge.

        The product is of int8 copies (each centroid and query token scaled to 127 at its largest
        |value|; engine/_maxsim.py score_table_i8): exact in integers, 4x the float32 product's
        rate with AVX-512 VNNI, and off from the float product by ~1e-3 a score (on scifact's
        300 queries the same search loss, 0.9933; BENCHMARKS 3.4). Then int16 at 1/16384
        (truncated): unit queries and unit centroids give |score| <= 1, nothing next to what
        replacing tokens by centroids already approximates; exact re-ranking never uses it. Centroid-
        major, so centroid interaction gathers one 64-byte row per id (measured 6x
        faster than gathering a column from q rows, 30% faster overall); half the
        bytes of float32 (2 MB for 32 query tokens at K=32,768), and no (q, K) copy
        is kept.
        """
        K, q = len(self.corpus.centroids), len(Q)
        table = aligned_empty((K, q), np.int16)
        blocks = range(0, K, CENTROID_BLOCK)
        n = min(self.nprobe, K)
        scale = self._score_scale
        delta = None if self.probe_delta is None else int(round(self.probe_delta * scale))

        cent = self.corpus.centroids_i8
        query = int8_query(Q * np.float32(scale), cent[0].shape[1])

        def one(i: int) -> tuple:
            a = blocks[i]
            rows_out = table[a : a + CENTROID_BLOCK]
            score_table_i8(tuple(x[a : a + CENTROID_BLOCK] for x in cent), query, rows_out)  # (b, q), truncated
            return _probe_block(rows_out, a, n, delta)

        parts = self.workers.map(one, len(blocks))
        rows, cols, vals = (np.concatenate([p[0][j] for p in parts]) for j in range(3))
        tokens, cents = _best_per_row(rows, cols, vals, q, n)
        if delta is not None:
            rows, cols, vals = (np.concatenate([p[1][j] for p in parts]) for j in range(3))
            best = np.full(q, np.iinfo(np.int16).min, dtype=np.int64)
            np.maximum.at(best, rows, vals.astype(np.int64))
            close = vals.astype(np.int64) >= best[rows] - delta
            t2, c2 = _best_per_row(rows[close], cols[close], vals[close], q, MAX_PROBE)
            tokens, cents = np.concatenate([tokens, t2]), np.concatenate([cents, c2])
        return table, tokens, cents

    def _candidates(self, table: np.ndarray, probed: np.ndarray, k: int, allowed: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Stages 2-3: the documents of the probed inverted lists, ranked by centroid interaction.

        table is (K, q): query-centroid scores (int16, see _score_and_probe); probed
        the centroids the query's tokens probe. Each candidate's score is MaxSim with
        its tokens replaced by their centroids, computed from its distinct centroid ids
        (the document-major copy of the inverted lists). Returns the best
        max(k, ndocs) candidates, best first: the survivors, and their centroid-interaction
        scores (in score units).
        """
        c = self.corpus
        if allowed is not None and len(allowed) <= max(self.ndocs, k):
            docs = allowed  # a small subset skips probing: all of it is scored
        else:
            cents = np.unique(probed)
            if self._reading_ahead():
                pair_docs, pair_cents = c.probed_docs(cents, with_centroids=True)
                if len(pair_docs):
                    self._read_ahead(table, pair_docs, pair_cents, k)
            else:
                pair_docs = c.probed_docs(cents)
            docs = _distinct(pair_docs, c.n_docs)
            docs = docs[~c.deleted[docs]]
            if allowed is not None:
                docs = docs[np.isin(docs, allowed, assume_unique=True)]
        if len(docs) == 0:
            return docs, np.zeros(0, dtype=np.float32)
        starts, lens = c.distinct_code_spans(docs)
        ci = centroid_interaction(table, c.doc_codes, starts, lens, self.workers)
        best = top_k(ci, self._survivors(k))
        return docs[best], ci[best] / np.float32(self._score_scale)

    def _survivors(self, k: int) -> int:
        return max(k, self.ndocs)

    def _reading_ahead(self) -> bool:
        return self.prefetch and not self.placement.residuals_resident

    def _read_ahead(self, table: np.ndarray, docs: np.ndarray, cents: np.ndarray, k: int) -> None:
        """Start reading the likely survivors before centroid interaction has picked them.

        (docs, cents) are the probed (document, centroid) pairs. A cheap guess from
        them alone (sum over query tokens of the best probed centroid each candidate
        has) picks 2 x the first wave's survivors, so the reads overlap centroid interaction
        (measured before residual interaction, with 96-192 survivors: hit rate
        0.97-0.99; the row cache must hold 2 x survivors' rows for that).
        """
        order = np.argsort(docs, kind="stable")  # group the pairs by document
        docs, cents = docs[order], cents[order]
        first = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])  # group starts
        guess = np.maximum.reduceat(np.take(table, cents, axis=0), first, axis=0).sum(axis=1)
        likely = docs[first][top_k(guess, 2 * min(self._survivors(k), FIRST_WAVE))]
        self.prefetcher.prefetch(likely[~self.corpus.deleted[likely]])

    def _rows_of(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, residual rows, lengths) of docs, concatenated in their order: from RAM where the
        residuals are resident, through the prefetcher's cache with prefetch on, else read now."""
        c, p = self.corpus, self.prefetcher
        if c.residuals is not None:
            return c.resident_rows(docs)
        if self.prefetch:
            return _stack(p.get(docs))
        return p.read_through(docs)

    def _rerank(self, Q: np.ndarray, table: np.ndarray, final: np.ndarray, ci: np.ndarray, k: int) -> Hits:
        """Stages 4-5: residual interaction over the survivors, then exact MaxSim over the best of them; top k.

        final: the survivors, best first by centroid interaction, whose scores are ci. They are
        scored in waves (the first FIRST_WAVE, then WAVE at a time) until the next survivor could
        not reach the best n_exact = max(EXACT_DOCS, 2k) so far (_stop), or none are left.
        A wave is cut into RESIDUAL_SLICE-document slices, each read in document order (no
        reordering copy) and spread over the query's threads; with prefetch on, in steps of
        PREFETCH_SLICE, those whose rows have all arrived first. Each step is scored by residual
        interaction (engine/_maxsim.py: centroid score + the residual's score from per-query
        lookup tables, no decoding), and the rows of its best are kept so the best n_exact
        overall are decoded and scored exactly without reading them again.
        Which documents are scored, and their order, never depend on timing, placement or the
        number of threads: same scores, same ties.
        """
        n_exact = max(EXACT_DOCS, 2 * k)
        if len(final) <= n_exact:
            self._scored += len(final)
            return self._rerank_exact(Q, final, k)
        at = np.concatenate([np.argsort(final[a : a + RESIDUAL_SLICE], kind="stable") + a
                             for a in range(0, len(final), RESIDUAL_SLICE)])  # docs[j] = final[at[j]]: slices in doc order
        docs = final[at]
        step = PREFETCH_SLICE if self._reading_ahead() else RESIDUAL_SLICE
        lut = residual_lut(Q, self._byte_tables)
        scores = np.full(len(docs), -np.inf, dtype=np.float32)
        kept: list = []

        def one(a: int) -> tuple:
            codes, res, lens = self._rows_of(docs[a : a + step])
            part = scores[a : a + len(lens)]
            part[...] = residual_interaction(Q, table, self._score_scale, lut, self.corpus.codec, codes, res, lens)
            # only the step's own best n_exact can be among the overall best n_exact: keep just their rows
            local = np.sort(top_k(part, n_exact))
            return (a + local, *_select_docs(codes, res, lens, local))

        done = 0
        while done < len(docs):
            end = min(len(docs), FIRST_WAVE if done == 0 else done + WAVE)
            cuts = list(range(done, end, step))
            if self._reading_ahead():  # small steps, those read ahead already first
                cuts.sort(key=lambda a: not self.prefetcher.cached(docs[a : a + step]))
            if self._reading_ahead() and end < len(docs):  # the next wave, while this one is scored
                self.prefetcher.prefetch(final[end : end + WAVE])
            kept += self.workers.map(lambda j: one(cuts[j]), len(cuts))
            done = end
            if done < len(docs) and _stop(scores[:done], ci[at[:done]], float(ci[done]), n_exact):
                break
        self._scored += done
        kept.sort(key=lambda p: int(p[0][0]))  # by position: ready-first order may have scored them out of order
        best = np.sort(top_k(scores[:done], n_exact))  # positions in docs, ascending
        pos = np.concatenate([p[0] for p in kept])  # ascending: steps in order, each sorted
        codes, res, lens = _select_docs(*(np.concatenate([p[j] for p in kept]) for j in (1, 2, 3)),
                                        np.searchsorted(pos, best))
        bounds = np.concatenate([[0], np.cumsum(lens)])
        return self._exact_chunked(Q, docs[best], k, lambda ds, a: (
            codes[bounds[a] : bounds[a + len(ds)]], res[bounds[a] : bounds[a + len(ds)]], lens[a : a + len(ds)]))

    def _rerank_exact(self, Q: np.ndarray, final: np.ndarray, k: int) -> Hits:
        """Exact MaxSim over all of `final`'s decompressed tokens; top k."""
        c = self.corpus
        if len(final) == 0:
            return []
        if c.residuals is not None:
            return self._exact_chunked(Q, final, k, lambda docs, a: c.resident_rows(docs))
        p = self.prefetcher
        if not self.prefetch:  # read through, all survivors in one read: no per-document copies, no cache
            codes, res, lens = p.read_through(final)
            doc_bounds = np.concatenate([[0], np.cumsum(lens)])
            return self._exact_chunked(Q, final, k, lambda docs, a: (
                codes[doc_bounds[a] : doc_bounds[a + len(docs)]], res[doc_bounds[a] : doc_bounds[a + len(docs)]],
                lens[a : a + len(docs)]))
        return self._exact_chunked(Q, final, k, lambda docs, a: _stack(p.get(docs)), ready=p.cached)

    def _exact_chunked(self, Q: np.ndarray, final: np.ndarray, k: int, rows_of, ready=None) -> Hits:
        """Exact MaxSim over `final`, STREAM_CHUNK documents at a time.

        rows_of(docs, a) gives the (codes, residuals, lengths) of docs = final[a : a + step].

        Chunks whose rows have all arrived are scored first, while the
        prefetcher keeps reading the others. Which documents form a chunk is
        fixed by position, never by timing, so a document's score is always
        computed the same way: every placement, and a batch or a single query,
        give bit-identical scores.
        """
        scores = np.empty(len(final), dtype=np.float32)
        step = STREAM_CHUNK if self.device == "cpu" else max(len(final), 1)  # a GPU wants one big batch
        pending = list(range(0, len(final), step))
        if self.workers.threads > 1 and len(pending) > 1:  # chunks in parallel: those read already first
            if ready:
                pending.sort(key=lambda a: not ready(final[a : a + step]))

            def one(i: int) -> None:
                a = pending[i]
                scores[a : a + step] = self._exact(Q, *rows_of(final[a : a + step], a))

            self.workers.map(one, len(pending))
            pending = []
        while pending:
            a = next((a for a in pending if ready(final[a : a + step])), pending[0]) if ready else pending[0]
            pending.remove(a)
            scores[a : a + step] = self._exact(Q, *rows_of(final[a : a + step], a))
        return self._hits(final, scores, k)

    def _exact(self, Q: np.ndarray, codes: np.ndarray, residuals: np.ndarray, lens: np.ndarray) -> np.ndarray:
        tokens = self.corpus.codec.decode(codes, residuals)
        if self.device == "cpu":
            return maxsim_concat(Q, tokens, lens)
        return maxsim_torch(Q, tokens, lens, self.device)

    def _hits(self, docs: np.ndarray, scores: np.ndarray, k: int) -> Hits:
        return [(self.corpus.doc_id(int(docs[i])), float(scores[i])) for i in top_k(scores, k)]


def _stop(scores: np.ndarray, ci: np.ndarray, next_ci: float, n_exact: int) -> bool:
    """Whether to stop scoring survivors: scores are residual interaction's and ci centroid interaction's
    for those scored so far; next_ci is the next survivor's (no later one has more). Residual
    interaction adds to centroid interaction what the residuals add; if the next survivor gained
    the most any survivor has gained so far, plus STOP_MARGIN of it, it would still fall short of
    the n_exact-th best score: stop. An estimate, not a bound; docs/BENCHMARKS.md 3.4 measures it."""
    if len(scores) < n_exact:
        return False
    gain = float((scores - ci).max())
    nth_best = float(np.partition(scores, len(scores) - n_exact)[len(scores) - n_exact])
    return next_ci + gain + STOP_MARGIN * abs(gain) < nth_best


def _select_docs(codes: np.ndarray, res: np.ndarray, lens: np.ndarray, which: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of documents concatenated as (codes, residual rows, lengths), those numbered `which`, concatenated
    in that order (copies: the rest can be freed)."""
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])[which]
    idx = np.repeat(starts, lens[which]) + ramp(lens[which])
    return np.take(codes, idx), np.take(res, idx, axis=0), lens[which].astype(np.int64)


def _stack(rows: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-document (codes, residuals) pairs -> concatenated codes, residuals, and lengths."""
    return (np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]),
            np.array([len(r[0]) for r in rows], dtype=np.int64))


_CONTROLLER = None


def check_queries(store: Store, qs: list[np.ndarray]) -> list[np.ndarray]:
    """Queries as the store holds vectors: checked, unit rows, projected when the store reduces dims."""
    dim = store.input_dim
    out = []
    for i, q in enumerate(qs):
        if q.ndim != 2 or q.shape[1] != dim:
            raise ValueError(f"query {i}: expected (q_len, {dim}), got shape {q.shape}")
        if q.shape[0] == 0:
            raise ValueError(f"query {i}: empty query (no token vectors)")
        out.append(store.project(normalize_query(q, f"query {i}")))
    return out


def normalize_query(q: np.ndarray, what: str = "query") -> np.ndarray:
    """Check a (q_len, dim) query's values and return it as unit-norm float32 rows."""
    if not np.issubdtype(q.dtype, np.floating):
        raise ValueError(f"{what}: expected float16/32/64 values, got {q.dtype}")
    if not np.isfinite(q).all():
        raise ValueError(f"{what}: values must be finite (NaN or inf found)")
    q = q.astype(np.float32)
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    return q / np.where(norms > 0, norms, 1)


def _release_free_memory() -> None:
    """Give the heap pages freed after building the index back to the OS (glibc only).

    Building the merged inverted lists leaves ~10 MB of freed temporaries that
    glibc would otherwise keep in the process (measured on a 1e6-token store).
    Not done per query: the query working set (~15-20 MB at 1e6 tokens, d=128)
    is reused from query to query, and trimming it made every query page-fault
    it back in (measured: p50 +45%, 16.3 vs 9.2 ms).
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _distinct(values: np.ndarray, n: int) -> np.ndarray:
    """The distinct values (all in [0, n)), ascending.

    Marking them in an n-slot mask is ~10x cheaper than sorting for the few
    thousand candidates of 1e6-1e7-token stores; sorting wins when n dwarfs them.
    """
    if n > 32 * len(values):
        return np.unique(values)
    seen = np.zeros(n, dtype=bool)
    seen[values] = True
    return np.flatnonzero(seen)


def _score_scale(centroids: np.ndarray) -> float:
    """SCORE_SCALE, unless a centroid is so long that a score could leave int16 (queries are unit
    or shorter, so |score| <= the longest centroid's norm; int16 holds 2 x SCORE_SCALE). The
    stores' centroids are unit (norm 1 +- 3e-4): the scale stays SCORE_SCALE for them."""
    longest = float(np.sqrt(np.einsum("ij,ij->i", centroids, centroids).max(initial=0.0)))
    return float(SCORE_SCALE) if longest < 1.99 else SCORE_SCALE * 1.99 / longest


def _probe_block(block: np.ndarray, first: int, n: int, delta: int | None) -> tuple:
    """One centroid block's probe candidates: ((tokens, centroids, values) of each token's top n, and with
    delta those within it of the token's best in the block, at most MAX_PROBE, or None). block is (b, q),
    centroid-major, its first row centroid `first`. The C kernel makes one pass over it with no transposed
    copy; the numpy path (_top_columns, _within) gives the same pairs (ties: the lower centroid)."""
    b, q = block.shape
    n = min(n, b)
    if native.top_rows is None:
        quant = np.ascontiguousarray(block.T)  # (q, b): per-token rows
        top = _top_columns(quant, n)  # (q, n) block-local columns
        rows = np.repeat(np.arange(q), n)
        found = (rows, top.ravel() + first, quant[rows, top.ravel()])
        if delta is None:
            return found, None
        r, c = _within(quant, delta, MAX_PROBE)
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


def _best_per_row(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, n: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Of (row, column, value) candidates, the n best of each row (ties: lower column)."""
    order = np.lexsort((cols, -vals.astype(np.int64), rows))
    counts = np.bincount(rows, minlength=n_rows)
    rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = order[rank < n]
    return rows[keep], cols[keep]


def _within(S: np.ndarray, delta: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of entries within `delta` of their row's best, at most `cap` (the best) per row.

    One compare and a flat nonzero over the block (measured 0.2 ms for 32 x 32,768), then
    a sort of the few hits only.
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


def _top_columns(S: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the n largest entries of each row of S (any order).

    For the small n of probing, n argmax passes over a copy beat argpartition
    (measured 5x at K=8192); the caller passes one block of CENTROID_BLOCK
    columns (256 KB as int16 for 32 query tokens), so the copy stays small.
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


def _blas_single_thread():
    """Run the query's small matmuls on one BLAS thread: on a busy 2-core box, thread
    hand-offs cost more than they buy for (K x 128) @ (128 x 32) products."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")
