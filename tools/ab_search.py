"""A/B of search latency: engine versions (checkouts) and thread counts, alternating fresh processes.

    python -m tools.ab_search STORE BUNDLE [--repos OLD_CHECKOUT,.] [--threads 1,2] [--queries 100] [--rounds 2] [--ndocs 384]

Each (checkout, threads) pair runs in a fresh child process with that
checkout first on sys.path (e.g. a `git worktree add /tmp/old COMMIT`), in
round-robin order, `--rounds` times: open a Searcher (default settings,
budget auto; --ndocs fixes ndocs and turns probe_delta off, so checkouts
whose defaults differ do the same work), one untimed pass over the queries (heap and page cache warm),
then every query once, timed. The table gives each pair's p50 per round,
their median, the ratio to the first pair, and a hash of the top-10 ids so
a change that should not move results can be seen not to. On a shared
machine only ratios from one run mean anything; the load is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.abc
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


class _Checkout(importlib.abc.MetaPathFinder):
    """Finds lodestore, lodestore.engine and lodestore.store in one checkout. sys.path alone is not
    enough: the editable install's own finder maps lodestore.engine and lodestore.store to the
    installed checkout whatever sys.path says (pyproject.toml's package-dir), so without this a
    comparison of two checkouts ran the installed engine twice."""

    PARTS = {"lodestore": "lodestore", "lodestore.engine": "engine", "lodestore.store": "store"}

    def __init__(self, repo: str):
        self.repo = repo

    def find_spec(self, name, path, target=None):
        part = self.PARTS.get(name)
        if part is None or not os.path.isfile(os.path.join(self.repo, part, "__init__.py")):
            return None
        folder = os.path.join(self.repo, part)
        return importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])


def child(cfg: dict) -> dict:
    sys.path.insert(0, cfg["repo"])
    sys.meta_path.insert(0, _Checkout(cfg["repo"]))
    import lodestore
    import lodestore.engine
    import lodestore.store

    import inspect

    from tools.bench_search import timed_queries

    queries = np.load(Path(cfg["bundle"]) / "queries.npy")[: cfg["queries"]]
    # checkouts from before Searcher(threads=) search on one thread
    params = inspect.signature(lodestore.Searcher).parameters
    options = {"threads": cfg["threads"]} if "threads" in params else {}
    if cfg.get("ndocs"):  # the same work in every checkout: fixed ndocs, no probe_delta
        options["ndocs"] = cfg["ndocs"]
        if "probe_delta" in params:
            options["probe_delta"] = None
    with lodestore.Searcher(cfg["store"], **options) as s:
        for q in queries:
            s.search(q, k=10)
        times, ids = timed_queries(s, queries)
    return {"p50_ms": float(np.median(times) * 1e3), "mean_ms": float(np.mean(times) * 1e3),
            "hash": hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:8], "load": os.getloadavg()[0],
            "lodestore": [m.__file__ for m in (lodestore, lodestore.engine, lodestore.store)],
            "threads": options.get("threads", 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.ab_search", description=__doc__.split("\n")[0])
    p.add_argument("store")
    p.add_argument("bundle")
    p.add_argument("--repos", default=".", help="comma-separated checkouts to compare (default: this one)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--ndocs", type=int, default=None,
                   help="search every checkout with this ndocs and no probe_delta (default: each checkout's defaults)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    pairs = list(dict.fromkeys((str(Path(r).resolve()), int(t)) for r in args.repos.split(",")
                               for t in args.threads.split(",")))
    runs: dict = {pair: [] for pair in pairs}
    for _ in range(args.rounds):
        for repo, threads in pairs:
            cfg = {"repo": repo, "threads": threads, "store": args.store, "bundle": args.bundle, "queries": args.queries,
                   "ndocs": args.ndocs}
            out = subprocess.run([sys.executable, "-m", "tools.ab_search", "x", "x", "--child", json.dumps(cfg)],
                                 capture_output=True, text=True, check=True)
            runs[(repo, threads)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nstore: {args.store}; {args.queries} queries; {args.rounds} rounds, alternating processes")
    print("| checkout | threads | p50 ms per round | median p50 ms | vs first | top-10 hash | load |")
    print("|---|---|---|---|---|---|---|")
    first = None
    for (repo, threads), rs in runs.items():
        med = float(np.median([r["p50_ms"] for r in rs]))
        first = first or med
        assert all(Path(f).resolve().is_relative_to(repo) for r in rs for f in r["lodestore"]), rs  # the checkout asked for
        per_round = " / ".join(f"{r['p50_ms']:.1f}" for r in rs)
        used = ",".join(sorted({str(r["threads"]) for r in rs}))
        print(f"| {repo} | {used} | {per_round} | {med:.1f} | x{med / first:.2f} | "
              f"{','.join(sorted({r['hash'] for r in rs}))} | {np.mean([r['load'] for r in rs]):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
