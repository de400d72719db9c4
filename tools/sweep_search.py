"""Recall/latency operating points of the Searcher over (nprobe, ndocs), one process, one table.

    python -m tools.sweep_search BUNDLE STORE [--grid 4x384,8x256,8x384,8x512,8x512d0.1] [--queries 100] [--budget all]

A setting is NPROBExNDOCS, optionally followed by dDELTA (probe_delta: also probe
each query token's centroids within DELTA of its best, at most 32).

Recall@10 is against exhaustive MaxSim over the same store (the ground truth
tools/bench_search.py caches beside it, computed here if missing). One
untimed pass over the queries warms the page cache; then each setting
answers 5 warm-up queries, then every query once; the table also
gives the ratio of each p50 to the first setting's, measured in the same run.
This is what chose the defaults (docs/BENCHMARKS.md section 3).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.sweep_search", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("store", type=Path)
    p.add_argument("--grid", default="4x384,8x256,8x384,8x512", help="comma-separated NPROBExNDOCS[dDELTA] settings")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--budget", default="all")
    args = p.parse_args(argv)

    import lodestore
    from tools.bench_search import recall, timed_queries, truth

    queries = np.load(args.bundle / "queries.npy")[: args.queries]
    reference = truth(args.store, queries)
    rows = []
    with lodestore.Store.open(args.store) as store, lodestore.Searcher(store, memory_budget=args.budget) as searcher:
        for q in queries:  # one untimed pass: the first setting must not pay for a cold page cache
            searcher.search(q, k=10)
        for spec in args.grid.split(","):
            main, _, delta = spec.lower().partition("d")
            nprobe, ndocs = (int(v) for v in main.split("x"))
            searcher.set_search_options(nprobe=nprobe, ndocs=ndocs, probe_delta=float(delta) if delta else None)
            for q in queries[:5]:
                searcher.search(q, k=10)
            times, results = timed_queries(searcher, queries)
            rows.append((nprobe, delta or "-", ndocs, max(10, ndocs), recall(results, reference),
                         np.median(times) * 1e3))
    print(f"\nstore: {args.store}; queries: {len(queries)}; budget: {args.budget}; load {__import__('os').getloadavg()[0]:.1f}")
    print("| nprobe | probe_delta | ndocs | survivors | R@10 store | p50 ms | p50 vs first |")
    print("|---|---|---|---|---|---|---|")
    for nprobe, delta, ndocs, surv, rec, p50 in rows:
        print(f"| {nprobe} | {delta} | {ndocs} | {surv} | {rec:.3f} | {p50:.1f} | x{p50 / rows[0][5]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
