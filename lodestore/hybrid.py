"""Search modes of an Index: MaxSim, BM25 keywords, and the two fused (hybrid).

Hybrid search asks each side for its best FUSION_DEPTH documents (at least k) and
fuses the two ranked lists:

* "rrf": reciprocal rank fusion, score(d) = sum over lists of 1 / (RRF_K + rank(d)),
  rank counted from 1 (Cormack et al. 2009; the constant 60 is theirs);
* "score": each list's scores min-max normalized to [0, 1] over the list, then
  averaged with equal weights; a document missing from a list gets 0 there.

Results are ordered by fused score, ties broken by id, so the same query gives
the same order every time. The default mode and fusion (hybrid, score) were chosen by
measurement on scifact, cranfield and medline: docs/BENCHMARKS.md, "Hybrid keyword + MaxSim
search" (higher nDCG@10 and R@100 than MaxSim alone on all three; the MaxSim side ranks
FUSION_DEPTH documents instead of k, which costs latency). Query vectors (a Searcher, the
server's "vectors") are always searched by MaxSim.
"""

from __future__ import annotations

from typing import Sequence

MODES = ("maxsim", "bm25", "hybrid")
FUSIONS = ("rrf", "score")
DEFAULT_MODE = "hybrid"
DEFAULT_FUSION = "score"
RRF_K = 60
#: Documents each side ranks before fusion (at least k): the fused top 100 can use both lists' top 100.
FUSION_DEPTH = 100

Ranked = list[tuple[str, float]]


def check_mode(mode: object, fusion: object) -> None:
    """A ValueError naming the choices for an unknown mode or fusion."""
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; expected one of {', '.join(map(repr, MODES))}")
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; expected one of {', '.join(map(repr, FUSIONS))}")


def depth(mode: str, k: int) -> int:
    """How many documents each side ranks for a top-k answer in this mode."""
    return max(k, FUSION_DEPTH) if mode == "hybrid" else k


def fuse(lists: Sequence[Ranked], k: int, fusion: str) -> Ranked:
    """The top-k of several ranked (id, score) lists fused by `fusion` ("rrf" or "score")."""
    fused: dict[str, float] = {}
    for ranked in lists:
        for doc_id, part in zip((d for d, _ in ranked), _contributions(ranked, fusion)):
            fused[doc_id] = fused.get(doc_id, 0.0) + part
    return sorted(fused.items(), key=lambda h: (-h[1], h[0]))[:k]


def _contributions(ranked: Ranked, fusion: str) -> list[float]:
    if fusion == "rrf":
        return [1.0 / (RRF_K + rank) for rank in range(1, len(ranked) + 1)]
    scores = [s for _, s in ranked]
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    if hi == lo:
        return [0.5] * len(scores)
    return [(s - lo) / (hi - lo) / 2 for s in scores]  # equal weights: each list contributes at most 1/2
