"""Search settings: one frozen value per Searcher, and the one policy that picks the defaults.

What a caller leaves unset is decided here from the store's size when a Searcher opens
(docs/BENCHMARKS.md 3.2-3.4 measure each choice); the pipeline stages read the settings
and never decide a default themselves. The arguments are checked in engine/_args.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_BUDGET = "auto"  # the index; + a 4 MB row cache with prefetch on (docs/BENCHMARKS.md 2.0b)
DEFAULT_NPROBE = 8
MAX_PROBE = 32  # most centroids one query token probes when probe_delta widens its probing
# Measured recall@10 against exhaustive search over the store (search loss; BENCHMARKS 3.2, 3.3): 8 probes
# plus the close calls (probe_delta 0.1: every centroid within 0.1 of a token's best) raise it at every size
# for a small latency cost; at 5e6-1e7 tokens almost every miss was a document never probed.
DEFAULT_PROBE_DELTA = 0.1
# ndocs, how many survivors of centroid interaction residual interaction may score (3.3, 3.4, C21): it scores
# them in waves in centroid-interaction order and stops once it expects none of the rest to reach the best
# that exact MaxSim re-ranks (engine/_rerank.py stop), most queries after one or two waves. The cap only bounds the hardest queries' work:
# DEFAULT_NDOCS below LARGE_STORE_TOKENS, LARGE_NDOCS from there (centroid interaction ranks exhaustive search's
# top 10 deeper as a store grows; C21 measures how deep at 1e8 tokens).
LARGE_STORE_TOKENS = 4_000_000
DEFAULT_NDOCS = 1024
LARGE_NDOCS = 4096
# Survivors a wave (the first one too): below LARGE_STORE_TOKENS DEFAULT_WAVE, where most queries stop after one
# wave (half the rows of 256 to read and score, at the same recall); from there LARGE_WAVE (smaller waves cost
# more there: more stop tests over thousands of unscored survivors). docs/BENCHMARKS.md C21. A wave is two
# slices of whole 16-document prefetch steps.
DEFAULT_WAVE = 128
LARGE_WAVE = 256
# Query tokens a single query may have: a query's working set grows with its tokens times the centroids
# (the (K, q) score table) and times the candidates' tokens; ColBERT-style encoders emit 32-512.
DEFAULT_MAX_QUERY_TOKENS = 1024
# Kernel read hints (posix_fadvise WILLNEED) for the survivors' rows as soon as they are known: "auto" gives them
# while the rows come from the device and not while the page cache holds them (engine/_rows.py HintPolicy)
DEFAULT_READ_HINTS = "auto"
# Centroid interaction ranks at most prefilter x ndocs candidates; when the probed lists hold more, they are
# cut first by centroid interaction over their probed centroids only (a lower bound of the full one; PLAID's
# stage 2 prunes to centroids above a score threshold to the same end). By default the cut keeps
# CUT_CANDIDATES whatever ndocs (prefilter = CUT_CANDIDATES / ndocs): measured against exhaustive search it loses
# almost no recall and saves most of centroid interaction's time at 1e8 tokens; below ~3e6 tokens no query has that
# many candidates (docs/BENCHMARKS.md C21).
CUT_CANDIDATES = 32_768


def default_prefilter(ndocs: int) -> int:
    """The prefilter (candidates per survivor) that keeps CUT_CANDIDATES candidates for ndocs survivors."""
    return max(1, -(-CUT_CANDIDATES // max(1, ndocs)))


@dataclass(frozen=True)
class SearchSettings:
    """Everything that shapes a Searcher's answers and its use of memory and threads.

    nprobe: centroids probed per query token. ndocs: at most how many candidates centroid
    interaction passes on to residual interaction (at least k are). probe_delta: also probe
    every centroid within this score of a token's best (at most MAX_PROBE), or None.
    device: "cpu" (numpy) or a torch device for exact re-ranking. prefetch / prefetch_threads:
    background reads of the likely survivors' rows. memory_budget: as parse_size takes it.
    max_query_tokens: the most token vectors one query may hold (ValueError above it).
    read_hints: tell the kernel which rows are read next (True, False, or "auto": while they come
    from the device; engine/_rows.py HintPolicy). index_dir: where a memory budget below the index
    puts the paged part's (unlinked) file; None: the system's temporary directory. prefilter: at
    most this many candidates per survivor reach full centroid interaction (the rest are cut by
    centroid interaction over their probed centroids); None: no cut. wave: survivors residual
    interaction scores between two stop tests, by store size (not a Searcher option).
    """

    nprobe: int
    ndocs: int
    probe_delta: float | None
    device: str = "cpu"
    prefetch: bool = False
    prefetch_threads: int = 2
    memory_budget: int | str | None = DEFAULT_BUDGET
    max_query_tokens: int = DEFAULT_MAX_QUERY_TOKENS
    read_hints: bool | str = DEFAULT_READ_HINTS
    index_dir: str | None = None
    prefilter: int | None = default_prefilter(DEFAULT_NDOCS)
    wave: int = DEFAULT_WAVE

    def survivors(self, k: int) -> int:
        """How many candidates centroid interaction keeps for a top-k query."""
        return max(k, self.ndocs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_settings(store_tokens: int, *, nprobe: int | None = None, ndocs: int | None = None,
                    probe_delta: float | None | str = "auto", device: str = "cpu", prefetch: bool = False,
                    prefetch_threads: int = 2, memory_budget: int | str | None = DEFAULT_BUDGET,
                    max_query_tokens: int | None = None, read_hints: bool | str = DEFAULT_READ_HINTS,
                    index_dir: str | None = None, prefilter: int | None | str = "auto") -> SearchSettings:
    """The settings for a store of `store_tokens` tokens: what the caller gave (already checked by
    engine/_args.py check_options), the defaults by store size for the rest."""
    large = store_tokens >= LARGE_STORE_TOKENS
    ndocs = (LARGE_NDOCS if large else DEFAULT_NDOCS) if ndocs is None else int(ndocs)
    return SearchSettings(
        nprobe=DEFAULT_NPROBE if nprobe is None else int(nprobe),
        ndocs=ndocs,
        probe_delta=DEFAULT_PROBE_DELTA if isinstance(probe_delta, str) else probe_delta,
        device=device,
        prefetch=bool(prefetch),
        prefetch_threads=prefetch_threads,
        memory_budget=memory_budget,
        max_query_tokens=DEFAULT_MAX_QUERY_TOKENS if max_query_tokens is None else int(max_query_tokens),
        read_hints=read_hints if isinstance(read_hints, str) else bool(read_hints),
        index_dir=index_dir,
        prefilter=default_prefilter(ndocs) if isinstance(prefilter, str) else prefilter,
        wave=LARGE_WAVE if large else DEFAULT_WAVE,
    )
