"""Retrieval quality of an Index on a judged collection: engine vs exhaustive MaxSim.

Metrics come from ir-measures (trec_eval's implementations), not computed by
hand. Both runs score the same query vectors against the same store, so the
difference between them is the cost of the engine's approximation alone.
"""

from __future__ import annotations

import time
from typing import Any

from .collection import Collection
from .hybrid import DEFAULT_FUSION, check_mode
from .index import Index

MEASURES = ("nDCG@10", "R@100", "RR@10")
RUN_DEPTH = 100


def evaluate(index: Index, collection: Collection, *, exhaustive: bool = True, max_queries: int | None = None,
             mode: str = "maxsim", fusion: str = DEFAULT_FUSION) -> dict[str, dict[str, Any]]:
    """{"engine": {...}, "exhaustive": {...}}: each the MEASURES, queries, ms/query.

    mode: the Index.search mode of the "engine" run (lodestore/hybrid.py); the
    exhaustive MaxSim run is made only for mode "maxsim", whose approximation it measures.
    """
    from lodestore.engine import exhaustive_search

    check_mode(mode, fusion)
    qids = list(collection.queries)[:max_queries]
    if not qids:
        raise ValueError(f"{collection.path}: no judged test query has a relevant document in the index")
    texts = [collection.queries[q] for q in qids]
    vectors = None if mode == "bm25" else index.query_vectors(texts)
    runs: dict[str, Any] = {"engine": lambda: index.ranked(texts, RUN_DEPTH, mode=mode, fusion=fusion, vectors=vectors)}
    if exhaustive and mode == "maxsim":
        runs["exhaustive"] = lambda: exhaustive_search(index.store, list(vectors), k=RUN_DEPTH)
    out: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        t0 = time.perf_counter()
        results = run()
        seconds = time.perf_counter() - t0
        out[name] = measure(qids, results, collection.qrels)
        out[name].update(queries=len(qids), ms_per_query=1000 * seconds / len(qids))
    return out


def measure(qids: list[str], results: list[list[tuple[str, float]]], qrels: list[tuple[str, str, int]],
            measures: tuple[str, ...] = MEASURES) -> dict[str, float]:
    """{measure: mean over qids} of ranked (doc id, score) lists against (query, doc, relevance) judgements."""
    import ir_measures

    wanted = set(qids)
    judged = [ir_measures.Qrel(q, d, s) for q, d, s in qrels if q in wanted]
    parsed = [ir_measures.parse_measure(m) for m in measures]
    scored = [ir_measures.ScoredDoc(q, d, s) for q, hits in zip(qids, results) for d, s in hits]
    agg = ir_measures.calc_aggregate(parsed, judged, scored)
    return {str(m): float(agg[m]) for m in parsed}
