"""Why does search miss a document exhaustive MaxSim ranks in the top 10? Probing or ranking?

    python -m tools.probe_misses BUNDLE STORE [--queries 100] [--deltas 0.05,0.1]

For each query, with the Searcher's default settings: every exhaustive top-10
document (over the same store, cached like tools/bench_search) the engine did
not return is counted as *not probed* (none of its centroids is among any query
token's nprobe best) or *cut* (probed, but centroid interaction ranked it below
the survivors). Then the candidate-set coverage of the exhaustive top 10, and
the candidates per query, for fixed probing at nprobe, 2x and 4x, and for
probing every centroid within DELTA of each query token's best (at least 4, at
most 32 per token). One table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def probe_fixed(n: int):
    return lambda S: np.argpartition(-S, n, axis=1)[:, :n]


def probe_within(delta: float, lo: int = 4, hi: int = 32):
    def pick(S: np.ndarray) -> np.ndarray:
        top = np.argpartition(-S, hi, axis=1)[:, :hi]
        vals = np.take_along_axis(S, top, 1)
        keep = vals >= vals.max(axis=1, keepdims=True) - delta
        best = np.argsort(-vals, axis=1)[:, :lo]
        keep[np.arange(len(S))[:, None], best] = True
        return top[keep]
    return pick


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.probe_misses", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("store", type=Path)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--deltas", default="0.05,0.1")
    args = p.parse_args(argv)

    import lodestore
    from lodestore.engine._args import check_queries
    from tools.bench_search import truth

    queries = np.load(args.bundle / "queries.npy")[: args.queries]
    reference = truth(args.store, queries)
    with lodestore.Store.open(args.store) as store, lodestore.Searcher(store) as searcher:
        c = searcher.corpus
        g_of = {c.doc_id(g): g for g in range(c.n_docs)}
        qs = check_queries(store, list(queries))

        def candidates(S: np.ndarray, cents: np.ndarray) -> np.ndarray:
            return np.unique(c.probed_docs(np.unique(cents)))

        found = unprobed = cut = 0
        variants = {f"fixed {n}": probe_fixed(n) for n in (searcher.nprobe, 2 * searcher.nprobe, 4 * searcher.nprobe)}
        variants |= {f"within {d} of best [4, 32]": probe_within(float(d)) for d in args.deltas.split(",") if d}
        covered = dict.fromkeys(variants, 0)
        sizes = dict.fromkeys(variants, 0)
        for q, raw, ref in zip(qs, queries, reference):
            S = q @ c.centroids.T
            docs = candidates(S, searcher.prober.score_and_probe(q, searcher.settings)[2])  # what the Searcher probes, probe_delta included
            got = {doc_id for doc_id, _ in searcher.search(raw, k=10)}
            want = [g_of[d] for d in ref[:10]]
            for name, pick in variants.items():
                cand = candidates(S, pick(S))
                covered[name] += int(np.isin(want, cand).sum())
                sizes[name] += len(cand)
            for doc_id, g in zip(ref[:10], want):
                if doc_id in got:
                    found += 1
                elif not np.isin(g, docs):
                    unprobed += 1
                else:
                    cut += 1
        n = len(qs)
        print(f"\n{args.store}: {n} queries, nprobe {searcher.nprobe}, probe_delta {searcher.probe_delta}, "
              f"ndocs {searcher.ndocs}; of {10 * n} exhaustive "
              f"top-10 documents the engine found {found}, missed {unprobed} never probed and {cut} probed but cut\n")
        print("| probing | coverage of exhaustive top-10 | candidates/query |")
        print("|---|---|---|")
        for name in variants:
            print(f"| {name} | {covered[name] / (10 * n):.3f} | {sizes[name] / n:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
