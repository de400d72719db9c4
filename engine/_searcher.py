"""The Searcher: PLAID-style candidate generation, residual interaction, exact MaxSim re-ranking.

A facade over the query pipeline; each part has its own module:
  engine/_args.py      every check of the caller's arguments (options, queries, k, subset)
  engine/_settings.py  SearchSettings (frozen) and the defaults policy by store size
  engine/_probe.py     stages 1-3: query-centroid scores, probing, centroid interaction
  engine/_rerank.py    stages 4-5: residual interaction in waves, the stop rule, exact MaxSim
  engine/_rows.py      where survivors' rows come from: resident, prefetched, or read through
  engine/_corpus.py    the resident index of one store generation; engine/_budget.py what stays resident
Queries are normalized as documents are, by lodestore.store's normalize_rows.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lodestore.store import Store

from ._args import check_k, check_options, check_prefilter, check_queries, check_read_hints, check_subset, split_queries
from ._budget import AUTO_CACHE, AUTO_CACHE_NO_PREFETCH, Placement, parse_size, place
from ._corpus import Corpus
from ._filter import Allowed, DocFilter
from ._maxsim import aligned_empty
from ._parallel import Workers, default_threads
from ._prefetch import Prefetcher
from ._probe import Prober
from ._rerank import Hits, Reranker
from ._rows import RowReader
from ._settings import DEFAULT_BUDGET, SearchSettings, choose_settings, default_prefilter

BATCH_TOKENS = 64  # query tokens of a batch sharing one score table: (K, 64) int16 is 4 MB at K=32,768


class Searcher:
    """Answers MaxSim queries over a store within a memory budget.

    memory_budget: bytes, a size string ("64MB"), "auto" (the default: what
    candidate generation needs, i.e. the centroids, inverted lists and each
    document's distinct centroid ids; token rows and their per-token ids are
    read for the survivors; with prefetch on, plus a 4 MB row cache), or "all"
    to keep everything in RAM. What a budget leaves beyond the index (and the
    codes) is the prefetch threads' row cache; without prefetch rows are read
    through and the OS page cache serves repeats. A budget below the index pages
    it: the inverted lists, each document's centroid ids and the id table go to an
    unlinked file under index_dir (default: the system's temporary directory),
    memory-mapped, read through the page cache like token rows (placement
    "index-paged"; its cost: docs/BENCHMARKS.md C18); only the centroids stay in RAM.
    nprobe: centroids probed per query token. ndocs (at least k): at most how
    many candidates centroid interaction passes on to residual interaction,
    best first; their rows are read and scored in waves (128 survivors below 4e6
    tokens, 256 from there: engine/_settings.py), stopping once
    none of the rest is expected to reach the best max(EXACT_DOCS, 2k) (engine/_rerank.py stop);
    the best max(EXACT_DOCS, 2k) are then scored exactly
    (stats()["scored_per_query"] says how many were scored).
    probe_delta: also probe every centroid whose score is within this of the
    token's best (at most MAX_PROBE a token): tokens whose best centroids are
    close calls probe more of them; None turns it off. Defaults: nprobe 8,
    probe_delta 0.1; ndocs DEFAULT_NDOCS below LARGE_STORE_TOKENS (4e6) tokens,
    LARGE_NDOCS from there on (decided when the Searcher opens, by
    engine/_settings.py choose_settings; see stats() and `settings`).
    max_query_tokens: the most token vectors one query may hold (default
    1024); a longer query is a ValueError before anything is allocated.
    device: "cpu" (numpy, no torch import) or a torch device such as "cuda" for
    the re-ranking step. prefetch: background threads read the likely
    survivors' rows while centroid interaction runs (ESPN-style). Off by
    default: it reads more bytes and holds more memory, and measured slower
    with two query threads (docs/BENCHMARKS.md 2.0b); it can pay where reads
    block for long and cores are spare.
    read_hints: as soon as a query knows which documents' rows it will read (the first wave of
    survivors, then each next wave once the stop rule lets it go on), tell the kernel
    (posix_fadvise WILLNEED), so the device reads them all at once while the query works, instead
    of one read at a time when they are needed. "auto" (the default) gives hints while the rows
    come from the device and stops while the page cache holds them (engine/_rows.py HintPolicy);
    True / False force it. stats()["read_hit_rate"] says how many reads found their rows cached.
    prefilter: where probing finds more than this many candidates per survivor, only the best
    by centroid interaction over their probed centroids go on to full centroid interaction (a
    lower bound, cheaper: engine/_probe.py); "auto" (32,768 candidates in all: CUT_CANDIDATES / ndocs
    per survivor, chosen in docs/BENCHMARKS.md C21) or None for no cut. It acts only where probing
    finds more candidates than that (stores of more than ~3e6 tokens).
    threads: threads one query's work is spread over (query-centroid product,
    centroid interaction, re-ranking chunks); default 2 where the process may
    use 2 cores. Results do not depend on it.
    """

    def __init__(self, store_or_path: Store | str | os.PathLike, memory_budget: int | str | None = DEFAULT_BUDGET,
                 nprobe: int | None = None, ndocs: int | None = None, *, device: str = "cpu",
                 prefetch: bool = False, prefetch_threads: int = 2, threads: int | None = None,
                 probe_delta: float | None | str = "auto", max_query_tokens: int | None = None,
                 read_hints: bool | str = "auto", index_dir: str | os.PathLike | None = None,
                 prefilter: int | None | str = "auto"):
        check_options(nprobe, ndocs, probe_delta, max_query_tokens)
        check_read_hints(read_hints)
        check_prefilter(prefilter)
        workers = Workers(default_threads() if threads is None else threads)  # checked before anything is opened
        self._own_store = not isinstance(store_or_path, Store)
        self.store = Store.open(Path(store_or_path)) if self._own_store else store_or_path
        if self.store.manifest.codec is None or not self.store.manifest.segments:
            if self._own_store:
                self.store.close()
            workers.close()
            raise ValueError(f"{self.store.root}: the store is empty; add documents before searching")
        self.settings: SearchSettings = choose_settings(
            sum(seg.tokens for seg in self.store.manifest.segments), nprobe=nprobe, ndocs=ndocs,
            probe_delta=probe_delta, device=device, prefetch=prefetch, prefetch_threads=prefetch_threads,
            memory_budget=memory_budget, max_query_tokens=max_query_tokens, read_hints=read_hints,
            index_dir=None if index_dir is None else os.fspath(index_dir), prefilter=prefilter)
        self.workers = workers
        self._prefilter_auto = isinstance(prefilter, str)  # "auto": the cut follows ndocs (set_search_options)
        self.generation = self.store.generation
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

    # the settings, read-only (set_search_options changes them)
    nprobe = property(lambda self: self.settings.nprobe)
    ndocs = property(lambda self: self.settings.ndocs)
    probe_delta = property(lambda self: self.settings.probe_delta)
    device = property(lambda self: self.settings.device)
    prefetch = property(lambda self: self.settings.prefetch)
    max_query_tokens = property(lambda self: self.settings.max_query_tokens)

    def set_search_options(self, *, nprobe: int | None = None, ndocs: int | None = None,
                           probe_delta: float | None | str = "keep", prefilter: int | None | str = "keep") -> None:
        """Change nprobe, ndocs, probe_delta or prefilter (None turns probe_delta or the cut off; "keep"
        keeps it) for later queries, checked as the constructor checks them (for parameter sweeps). A
        prefilter left "auto" keeps the cut at CUT_CANDIDATES in all when ndocs changes."""
        keep = isinstance(probe_delta, str) and probe_delta == "keep"
        keep_cut = isinstance(prefilter, str) and prefilter == "keep"
        check_options(nprobe, ndocs, "auto" if keep else probe_delta, None)
        if not keep_cut:
            check_prefilter(prefilter)
            self._prefilter_auto = isinstance(prefilter, str)
        changes: dict[str, Any] = {}
        if nprobe is not None:
            changes["nprobe"] = int(nprobe)
        if ndocs is not None:
            changes["ndocs"] = int(ndocs)
        if self._prefilter_auto and (ndocs is not None or not keep_cut):
            changes["prefilter"] = default_prefilter(int(ndocs) if ndocs is not None else self.settings.ndocs)
        elif not keep_cut:
            changes["prefilter"] = prefilter
        if not keep:
            changes["probe_delta"] = choose_settings(0, probe_delta=probe_delta).probe_delta
        self.settings = dataclasses.replace(self.settings, **changes)

    def _use(self, corpus: Corpus, placement: Placement) -> None:
        """Search `corpus` from now on: its placement, a prefetcher over it, the stages over its rows."""
        self.corpus, self.placement = corpus, placement
        self.prefetcher = Prefetcher(corpus.read_rows, placement.cache_bytes or (1 << 20),
                                     threads=self.settings.prefetch_threads, read_concat=corpus.read_concat)
        self.rows = RowReader(corpus, self.prefetcher, self.settings.prefetch, hints=self.settings.read_hints)
        self.prober = Prober(corpus, self.workers, self.rows)
        self.filter = DocFilter(corpus)
        self.reranker = Reranker(corpus, self.workers, self.rows, self.prober.scale, self.settings.device)

    def _load(self, store: Store) -> tuple[Corpus, Placement]:
        """The resident corpus of `store`'s generation (holding a lease on it), placed within the budget."""
        c = Corpus(store)
        try:
            store.projection  # load (and check) a dimension-reduction matrix now, not at the first query
            tokens = c.tokens()
            placement = place(
                parse_size(self.settings.memory_budget), c.planned_index_bytes(),
                tokens * c.codec.code_dtype.itemsize, tokens * c.codec.residual_bytes,
                auto_cache=AUTO_CACHE if self.settings.prefetch else AUTO_CACHE_NO_PREFETCH,
                pageable_bytes=c.pageable_bytes(),
            )
            c.build_index(paged=placement.index_paged, directory=self.settings.index_dir)
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

    def search(self, query: Any, k: int = 10, subset: Sequence[str] | None = None, *, where: str | None = None,
               params: Sequence[Any] | None = None) -> Hits | list[Hits]:
        """Top-k (id, score) by exact MaxSim, best first.

        query: (q_len, dim) -> one list of hits; (B, q_len, dim) or a list of
        (q_len_i, dim) -> one list per query. subset: only these document ids
        may be returned. where/params: only documents whose metadata match, e.g.
        where="year >= ? AND lang = ?", params=(2019, "en") (grammar: lodestore.store
        compile_where; how the search keeps its recall: engine/_filter.py).
        """
        k = check_k(k)
        flt = self.filter.compile(where, params)  # a bad expression is a ValueError before any search work
        single, qs = split_queries(query, self.store.input_dim)
        queries = check_queries(self.store, qs, self.settings.max_query_tokens)
        ids = check_subset(subset)
        allowed = self.filter.allowed(flt, self.corpus.lookup(ids) if ids is not None else None)
        t0 = time.perf_counter()
        results = self._search_batch(queries, k, allowed)
        self.query_time_s += time.perf_counter() - t0
        self.queries += len(queries)
        return results[0] if single else results

    def matching_ids(self, where: str, params: Sequence[Any] | None = None) -> list[str]:
        """Ids of the live documents whose metadata match `where`, in store order (for a caller that
        ranks by other means, e.g. keywords, and must honour the same filter)."""
        allowed = self.filter.allowed(self.filter.compile(where, params), None)
        return [self.corpus.doc_id(g) for g in allowed.docs.tolist()]

    def stats(self) -> dict[str, Any]:
        """Counters since open (or reset_stats) and what is resident.

        hits: documents whose rows were in the row cache when re-ranking needed
        them (read ahead by the prefetch threads, or kept from earlier queries);
        waited: in flight in a prefetch thread, so re-ranking waited; misses:
        read when needed. hit_rate = hits / (hits + waited + misses).
        bytes_read / read_calls: what the store files saw (whole inner chunks); row_bytes: the
        bytes of the rows asked for (bytes_read / row_bytes is the reader's amplification);
        read_waits: read calls that had to wait for the device (the rest found their bytes in the page
        cache: read ahead in time, or cached before); read_hints: runs of chunks the kernel was told
        to read ahead (read_hints); io_wait_s: time the
        query's threads spent reading or waiting for rows (summed over threads,
        so it can exceed wall time). resident_bytes: index + resident
        arrays + cache + residual interaction's byte tables (float32, 0.1-0.4 MB);
        placement: what the memory budget chose.
        """
        p = self.prefetcher
        requested = p.hits + p.waited + p.misses
        c = self.corpus
        resident = c.index_bytes() + p.resident_bytes + self.reranker.byte_tables.nbytes + self.filter.resident_bytes
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
            "row_bytes": p.row_bytes,
            "read_calls": p.read_calls,
            "read_waits": p.read_waits,
            "read_hit_rate": 1 - p.read_waits / p.read_calls if p.read_calls else 1.0,
            "read_hints": self.rows.hinted,
            "read_hints_on": self.rows.hints,
            "io_wait_s": p.io_wait_s,
            "resident_bytes": resident,
            "cache_bytes": p.resident_bytes,
            "placement": self.placement.to_dict(),
            "index_parts": c.index_parts(),
            "prefetch": self.prefetch,
            "nprobe": self.nprobe,
            "ndocs": self.ndocs,
            "scored_per_query": self._scored / self.queries if self.queries else 0.0,
            "probe_delta": self.probe_delta,
            "threads": self.workers.threads,
            "max_query_tokens": self.max_query_tokens,
            "metadata_bytes": self.filter.resident_bytes,
        }

    def reset_stats(self) -> None:
        self.prefetcher.reset_stats()
        self.rows.hinted = 0
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
    def _search_batch(self, queries: list[np.ndarray], k: int, allowed: Allowed | None) -> list[Hits]:
        """Groups of up to BATCH_TOKENS query tokens share one pass over the centroids."""
        out: list[Hits] = []
        group: list[np.ndarray] = []
        with _blas_single_thread():
            for q in queries:
                if group and sum(len(g) for g in group) + len(q) > BATCH_TOKENS:
                    out += self._search_group(group, k, allowed)
                    group = []
                group.append(q)
            return out + self._search_group(group, k, allowed)

    def _search_group(self, queries: list[np.ndarray], k: int, allowed: Allowed | None) -> list[Hits]:
        mark = self.rows.begin()
        try:
            return self._search_group_in(queries, k, allowed)
        finally:
            self.rows.end(mark)

    def _search_group_in(self, queries: list[np.ndarray], k: int, allowed: Allowed | None) -> list[Hits]:
        settings = self.settings
        bounds = np.concatenate([[0], np.cumsum([len(q) for q in queries])])
        table, tokens, probed = self.prober.score_and_probe(np.concatenate(queries), settings)  # once per group
        cands, tables = [], []  # candidates for every query first, so all reads are in flight before any re-ranking
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            mine = (tokens >= a) & (tokens < b)
            if len(bounds) == 2:
                own = table
            else:  # its own rows of 64 B to gather, on cache lines as the whole table's
                own = aligned_empty((len(table), b - a), np.int16)
                own[...] = table[:, a:b]
            cands.append(self.prober.candidates(own, probed[mine], k, allowed, settings))
            tables.append(own)
        del table
        for cand, _ in cands:  # the first wave, best first (those not read ahead already); rerank asks for the next
            self.rows.read_ahead(cand[:settings.wave])
            self.rows.hint(cand[:settings.wave])
        out = []
        for q, own, (cand, ci) in zip(queries, tables, cands):
            hits, scored = self.reranker.rerank(q, own, cand, ci, k, settings.wave)
            self._scored += scored
            out.append(hits)
        return out


_CONTROLLER = None


def _release_free_memory() -> None:
    """Give the heap pages freed after building the index back to the OS (glibc only).

    Building the merged inverted lists leaves freed temporaries that glibc would
    otherwise keep in the process. Not done per query: the query working set is
    reused from query to query, and trimming it made every query page-fault it
    back in (slower).
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _blas_single_thread():
    """Run the query's small matmuls on one BLAS thread: on a busy 2-core box, thread
    hand-offs cost more than they buy for (K x 128) @ (128 x 32) products."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")
