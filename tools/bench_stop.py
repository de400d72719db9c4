"""How many survivors a query scores, and what it buys: stop rules side by side, one process, one table.

    python -m tools.bench_stop BUNDLE STORE [--rules legacy,adaptive,fixed:256] [--queries 100] [--ndocs N]

A rule is one of:
  adaptive       the engine's stop rule (engine/_rerank.py stop) at its STOP_EXPECTED
  adaptive:TAU   the same rule stopping under TAU expected entrants instead
  fixed:N        no stop: all of N survivors scored (ndocs N)
  legacy         the rule before it (until main bb16ae0): stop once the next survivor, gaining the largest
                 gain seen plus half of it, could not reach the 32nd best; with that checkout's ndocs (256
                 from 4e6 tokens, else 1024), cut (512 candidates a survivor) and waves (256, slices of 128):
                 the baseline
  RULE@W         any of those with waves of W survivors (the first one too; default: the Searcher's, by
                 store size)
Each rule gets its own Searcher on the same open store (default settings unless the rule names ndocs;
--ndocs overrides every rule's). Recall@10 against exhaustive search over the store (tools/bench_search.py's
cached truth, computed if missing) and, where tools/ground_truth.py has run on BUNDLE, against the
uncompressed vectors; survivors scored a query (mean, p50, p90, from each query's stats); p50/p95 one query
at a time after an untimed pass, and each p50 over the first row's (same run). Chose the default of
docs/BENCHMARKS.md C21.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

LEGACY_MARGIN = 0.5
LEGACY_LARGE_TOKENS = 4_000_000  # from here the legacy defaults scored one wave of 256 (ndocs 256)


def legacy_stop(scores: np.ndarray, ci: np.ndarray, rest_ci: np.ndarray, n_best: int, wave: int) -> bool:
    """The stop rule before the adaptive one (BENCHMARKS 3.4), with the engine's stop() signature (n_best is
    the number exact MaxSim re-ranks, max(32, 2k): the legacy rule's n_exact)."""
    if len(scores) < n_best:
        return False
    gain = float((scores - ci).max())
    nth_best = float(np.partition(scores, len(scores) - n_best)[len(scores) - n_best])
    return float(rest_ci[0]) + gain + LEGACY_MARGIN * abs(gain) < nth_best


@contextmanager
def rule_in_force(rule: str):
    """The engine's stop rule swapped for `rule`'s while the block runs; yields the Searcher options it needs."""
    from lodestore.engine import _rerank

    saved = (_rerank.stop, _rerank.STOP_EXPECTED)
    rule, _, wave = rule.partition("@")
    name, _, arg = rule.partition(":")
    options: dict = {}
    if name == "legacy":
        options["wave"] = 256
    if wave:
        options["wave"] = int(wave)
    try:
        if name == "adaptive":
            if arg:
                _rerank.STOP_EXPECTED = float(arg)
        elif name == "fixed":
            _rerank.STOP_EXPECTED = -1.0  # expected entrants are never negative: never stops
            options["ndocs"] = int(arg)
        elif name == "legacy":
            _rerank.stop = legacy_stop
            options["legacy"] = True
        else:
            raise SystemExit(f"unknown rule {rule!r}: adaptive[:TAU], fixed:N or legacy")
        yield options
    finally:
        _rerank.stop, _rerank.STOP_EXPECTED = saved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_stop", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("store", type=Path)
    p.add_argument("--rules", default="legacy,adaptive", help="comma-separated rules (see the module's doc)")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--ndocs", type=int, default=None, help="every rule's ndocs (default: the Searcher's or the rule's)")
    args = p.parse_args(argv)

    import lodestore
    from tools.bench_search import raw_truth, recall, truth

    queries = np.load(args.bundle / "queries.npy")[: args.queries]
    reference = truth(args.store, queries)
    raw = raw_truth(args.bundle, len(queries))
    rows = []
    with lodestore.Store.open(args.store) as store:
        large = store.stats()["tokens"] >= LEGACY_LARGE_TOKENS
        for rule in args.rules.split(","):
            with rule_in_force(rule) as options:
                wave = options.pop("wave", None)
                if options.pop("legacy", False):
                    options = {"ndocs": 256 if large else 1024, "prefilter": 512}
                if args.ndocs is not None:
                    options["ndocs"] = args.ndocs
                with lodestore.Searcher(store, **options) as s:
                    if wave is not None:  # not a Searcher option: the settings pick it by store size
                        s.settings = dataclasses.replace(s.settings, wave=wave)
                    for q in queries:  # untimed: the page cache and the first queries' costs
                        s.search(q, k=10)
                    times, results, scored = [], [], []
                    for q in queries:
                        s.reset_stats()
                        t = time.perf_counter()
                        hits = s.search(q, k=10)
                        times.append(time.perf_counter() - t)
                        results.append([h[0] for h in hits])
                        scored.append(s.stats()["scored_per_query"])
                    rows.append((rule, s.settings.ndocs, s.settings.prefilter, s.settings.wave, recall(results, reference),
                                 recall(results, raw) if raw is not None else None, scored, times))
    base = np.median(rows[0][7])
    print(f"\nstore: {args.store}; {len(queries)} queries, k=10\n")
    print("| rule | ndocs | prefilter | wave | R@10 store | R@10 raw | scored mean | p50 | p90 | p50 ms | p95 ms | vs first |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for rule, ndocs, pre, wave, rec, rec_raw, scored, times in rows:
        print(f"| {rule} | {ndocs} | {pre} | {wave} | {rec:.3f} | {'-' if rec_raw is None else f'{rec_raw:.3f}'} | "
              f"{np.mean(scored):.0f} | {np.median(scored):.0f} | {np.percentile(scored, 90):.0f} | "
              f"{np.median(times) * 1e3:.1f} | {np.percentile(times, 95) * 1e3:.1f} | x{np.median(times) / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
