"""Where a lodestore query's time goes: wall time per pipeline stage, by wrapping the stages.

    python -m tools.profile_stages STORE BUNDLE [--queries 100] [--budget auto]

Reads the store's files once (warm page cache), wraps the Searcher's stage
methods (and the codec's decode, the corpus's row reads) with perf_counter
timers, runs 5 untimed warm-ups, then every query
once, and prints ms/query and share of the total per stage. Nested stages are
indented under their parent; "rest" is the total minus stages 1, 2-3 and 4
(query checks and the hit list). One thread per query by default, so the
stage times add up. Wrapping adds a few
microseconds per call: fine for where-does-it-go, not for p50 claims
(tools/bench_search.py and tools/bench_peers.py make those).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import numpy as np

STAGES = (  # (module or class path, attribute, label)
    ("lodestore.engine._probe:Prober", "score_and_probe", "1-2 query-centroid scores Q C^T + top-nprobe per token"),
    ("lodestore.engine._probe:Prober", "candidates", "2-3 probe + centroid interaction"),
    ("lodestore.engine._corpus:Corpus", "probed_pairs_by_doc", "  2b probed (document, centroid) pairs by document"),
    ("lodestore.engine._probe", "centroid_interaction", "  3b centroid interaction (gather ids + scores, segmented max)"),
    ("lodestore.engine._rerank:Reranker", "rerank", "4-5 residual interaction, then exact MaxSim over its best"),
    ("lodestore.engine._corpus:Corpus", "read_concat", "  4a read the survivors' token rows (disk placements, CRC-checked)"),
    ("lodestore.engine._rerank", "residual_interaction", "  4b residual interaction (lookup tables, no decoding)"),
    ("lodestore.store.codecs.scalar:ScalarCodec", "decode", "  5a decode (centroid + residual, normalize)"),
    ("lodestore.store.codecs.pq:PQCodec", "decode", "  5a decode pq (centroid + codebook gathers, normalize)"),
    ("lodestore.engine._rerank", "maxsim_concat", "  5b exact MaxSim (matmul + segmented max)"),
)


def _wrap(acc: dict, target: str, attr: str, label: str) -> None:
    import importlib

    mod, _, cls = target.partition(":")
    owner = getattr(importlib.import_module(mod), cls) if cls else importlib.import_module(mod)
    inner = getattr(owner, attr)

    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            acc[label] += time.perf_counter() - t

    setattr(owner, attr, timed)


def profile(store: str, bundle: str, n: int, budget: str, threads: int = 1,
            ndocs: int | None = None) -> tuple[float, float, dict[str, float]]:
    """(mean ms/q, p50 ms, {stage label: ms/q})."""
    import lodestore

    acc: dict[str, float] = collections.defaultdict(float)
    for target, attr, label in STAGES:
        _wrap(acc, target, attr, label)
    from tools import memstat

    memstat.warm([store])  # warm page cache, as the benchmarks' warm rows
    queries = np.load(f"{bundle}/queries.npy")[:n]
    with lodestore.Searcher(store, memory_budget=budget, threads=threads, ndocs=ndocs) as s:
        for q in queries[:5]:
            s.search(q, k=10)
        acc.clear()
        lat = []
        t0 = time.perf_counter()
        for q in queries:
            t = time.perf_counter()
            s.search(q, k=10)
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
    stages = {label: acc[label] / len(queries) * 1e3 for _t, _a, label in STAGES}
    top = sum(acc[label] for _t, _a, label in STAGES if not label.startswith(" "))
    stages["rest (query checks, hit list)"] = (total - top) / len(queries) * 1e3
    return total / len(queries) * 1e3, float(np.median(lat) * 1e3), stages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.profile_stages", description=__doc__.split("\n")[0])
    p.add_argument("store")
    p.add_argument("bundle")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--budget", default="auto")
    p.add_argument("--threads", type=int, default=1,
                   help="threads per query (default 1: with more, nested stages overlap and shares exceed 100%%)")
    p.add_argument("--ndocs", type=int, default=None, help="survivors of centroid interaction (default: the Searcher's)")
    args = p.parse_args(argv)
    mean, p50, stages = profile(args.store, args.bundle, args.queries, args.budget, args.threads, args.ndocs)
    import os

    print(f"{args.store} budget={args.budget} threads={args.threads} ndocs={args.ndocs or 'default'}: {mean:.2f} ms/q mean, p50 {p50:.2f} ms, load {os.getloadavg()[0]:.1f}")
    print("| stage | ms/q | share |\n|---|---|---|")
    for label, ms in stages.items():
        print(f"| {label} | {ms:.2f} | {ms / mean * 100:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
