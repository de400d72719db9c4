"""Search benchmark: recall@10, latency, QPS, memory and I/O of lodestore's placements.

    python -m tools.bench_search BUNDLE STORE [--budgets all,64MB,8MB] [--queries 200] [--cold] [--batch 32]

Each budget spec is BUDGET[:prefetch|:sync][@THREADS]: e.g. `auto:prefetch` turns the
prefetch threads on, `auto@1` searches with one thread per query (default: the Searcher's).

BUNDLE is an embedding bundle (tools/make_bundle.py) with queries.npy; STORE a
store built from it (`lodestore build STORE --embeddings BUNDLE`). Each
configuration runs in a fresh child process: imports, then VmRSS is read
(the baseline), then the Searcher opens, answers 5 warm-up queries, then
every query once, one at a time; then the batch mode (queries in groups of
--batch). Index memory = VmRSS after the loop - the baseline: it includes
the engine's arrays, its cache, and any store pages it touched.

Recall@10 is measured against exhaustive exact MaxSim over the same
compressed store (search loss only; cached beside the store as
STORE.truth.json, keyed by the manifest checksum and a hash of the queries) and, where tools/ground_truth.py has been run on the
bundle, against exact MaxSim over the uncompressed vectors (end to end). Warm rows: the parent reads the store's
files once before the child starts, so they are in the page cache. With --cold, the store's files are evicted from the
page cache (posix_fadvise DONTNEED) before every query.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def child(cfg: dict) -> dict:
    """Runs in a fresh process: measure one configuration."""
    import lodestore
    from tools import memstat

    queries = np.load(Path(cfg["bundle"]) / "queries.npy")[: cfg["queries"]]
    base = memstat.status_mb()
    spec = str(cfg.get("memory_limit") or "")
    limit = None
    if spec and not spec.startswith("cache="):  # the whole process from before its Searcher opens
        from tools.memlimit import MemoryLimit

        memstat.evict([Path(cfg["store"]) / "segments"])
        limit = MemoryLimit(spec)
    t0 = time.perf_counter()
    options = {} if cfg["prefetch"] is None else {"prefetch": cfg["prefetch"]}
    if cfg.get("threads"):
        options["threads"] = cfg["threads"]
    if cfg.get("hints") is not None:
        options["read_hints"] = cfg["hints"]
    if cfg.get("prefilter") is not None:
        options["prefilter"] = None if cfg["prefilter"] == "none" else int(cfg["prefilter"])
    searcher = lodestore.Searcher(cfg["store"], memory_budget=cfg["budget"], nprobe=cfg["nprobe"], ndocs=cfg["ndocs"],
                                  **options)
    load_s = time.perf_counter() - t0
    for q in queries[:5]:
        searcher.search(q, k=10)
    store_paths = [Path(cfg["store"]) / "segments"]
    if spec.startswith("cache="):
        limit = enter_cache_limit(float(spec.removeprefix("cache=")), store_paths, searcher, queries, cfg["batch"])
    searcher.reset_stats()
    io0 = memstat.io_read_bytes()
    cpu0 = time.process_time()
    times, results = timed_queries(searcher, queries, before=(lambda: memstat.evict(store_paths)) if cfg["cold"] else None)
    cpu = time.process_time() - cpu0
    disk_read = memstat.io_read_bytes() - io0
    after = memstat.status_mb()
    stats = searcher.stats()
    batch_times = []
    b = cfg["batch"]
    if b > 1:
        for s in range(0, len(queries), b):
            if cfg["cold"]:
                memstat.evict(store_paths)
            t = time.perf_counter()
            searcher.search(queries[s : s + b], k=10)
            batch_times.append((time.perf_counter() - t) / len(queries[s : s + b]))
    cgroup = limit.stats() if limit else None
    if limit:
        limit.close()
    n = len(queries)
    scored = max(stats.get("scored_per_query", 0), 0)
    return {
        "memory_limit": cfg.get("memory_limit"), "limit_mb": limit.limit / 1e6 if limit else None,
        "cgroup": cgroup, "hinted_per_query": stats["read_hints"] / n,
        "read_calls_per_query": stats["read_calls"] / n, "row_bytes_per_query": stats["row_bytes"] / n,
        "scored_per_query": scored, "hints": searcher.rows.hints, "index_parts": stats["index_parts"],
        "read_hit_rate": stats["read_hit_rate"],
        "placement": stats["placement"]["name"], "load_s": load_s, "threads": searcher.workers.threads,
        "p50_ms": float(np.percentile(times, 50) * 1e3), "p95_ms": float(np.percentile(times, 95) * 1e3),
        "qps": n / sum(times), "cpu_ms": cpu / n * 1e3,
        "batch_ms_per_query": float(np.mean(batch_times) * 1e3) if batch_times else None,
        "rss_mb": after["VmRSS"], "rss_anon_mb": after["RssAnon"], "rss_file_mb": after["RssFile"],
        "hwm_mb": after["VmHWM"], "baseline_mb": base["VmRSS"], "index_mb": after["VmRSS"] - base["VmRSS"],
        "engine_resident_mb": stats["resident_bytes"] / 1e6,
        "bytes_read_per_query": stats["bytes_read"] / n, "disk_read_per_query": disk_read / n,
        "hit_rate": stats["hit_rate"], "io_wait_ms": stats["io_wait_s"] / n * 1e3,
        "results": results, "loadavg": __import__("os").getloadavg()[0],
    }


LIMIT_MARGIN = 8 << 20  # slack over the query working set measured in the group (its peak is estimated)


def enter_cache_limit(frac: float, store_paths: list[Path], searcher, queries: np.ndarray, batch: int):
    """Hold this process (its Searcher open) to its query working set + frac x the store's bytes of
    page cache + LIMIT_MARGIN.

    A memory cgroup (tools/memlimit.py) counts the memory and page cache the process takes from now
    on (what it held before moving in stays charged outside). The store is evicted first, so its
    pages become our own charges. The queries run once untimed under a loose limit, the group's
    anonymous memory after them is the working set, and the limit is lowered to that + frac x store
    + LIMIT_MARGIN (the kernel reclaims cache down to it); with frac >= 1 the store is then read
    once (everything cached); with frac < 1 the timed pass meets the steady state of a cache held
    to frac of the store.
    """
    from tools import memstat
    from tools.memlimit import MemoryLimit

    store_bytes = sum(f.stat().st_size for p in store_paths for f in p.rglob("*") if f.is_file())
    memstat.evict(store_paths)
    lim = MemoryLimit(int(max(frac, 1) * store_bytes + (256 << 20)))
    for q in queries:
        searcher.search(q, k=10)
    if batch > 1:  # the batches' working set too (anonymous memory cannot be reclaimed: over it, OOM)
        searcher.search(queries[:batch], k=10)
    lim.set_limit(int(lim.stats()["peak"] - lim.stats()["cache"] + frac * store_bytes + LIMIT_MARGIN))
    if frac >= 1:
        memstat.warm(store_paths)
    return lim


def timed_queries(searcher, queries, k: int = 10, before=None) -> tuple[list[float], list[list[str]]]:
    """Every query once, one at a time: (seconds per query, top-k ids per query).
    `before` runs ahead of each query, untimed (e.g. evicting the page cache)."""
    times, ids = [], []
    for q in queries:
        if before is not None:
            before()
        t = time.perf_counter()
        hits = searcher.search(q, k=k)
        times.append(time.perf_counter() - t)
        ids.append([h[0] for h in hits])
    return times, ids


def manifest_checksum(store_path: Path) -> str:
    """The checksum of the store's current manifest: which generation a cached truth belongs to."""
    return json.loads((store_path / "manifest.json").read_text())["checksum"]


def _truth_key(store_path: Path, queries: np.ndarray, k: int, checksum: str | None = None) -> dict:
    import hashlib

    return {"manifest": checksum or manifest_checksum(store_path),
            "queries": hashlib.sha1(np.ascontiguousarray(queries).tobytes()).hexdigest(), "k": k}


def save_truth(store_path: Path, queries: np.ndarray, ids: list[list[str]], k: int = 10,
               checksum: str | None = None) -> None:
    """Cache exhaustive top-k ids for these queries beside the store (what truth() reads back).
    checksum: the manifest the ids were computed from (default: the current one), so a truth computed
    while a writer committed is kept under the generation it describes."""
    cache = store_path.with_name(store_path.name + ".truth.json")
    cache.write_text(json.dumps({"key": _truth_key(store_path, queries, k, checksum), "ids": ids}))


def opened_checksum(store_path: Path, store) -> str:
    """The manifest checksum of the generation `store` (just opened) holds: read until it names that
    generation, so a commit racing the open cannot label one generation's truth with another's."""
    while True:
        doc = json.loads((store_path / "manifest.json").read_text())
        if doc["generation"] == store.generation:
            return doc["checksum"]
        if doc["generation"] < store.generation:  # pragma: no cover - the file lags the open: read again
            continue
        raise RuntimeError(f"{store_path}: a writer committed while the store was being opened; run again")


def truth(store_path: Path, queries: np.ndarray, k: int = 10) -> list[list[str]]:
    """Exhaustive MaxSim top-k over the compressed store, cached beside it."""
    cache = store_path.with_name(store_path.name + ".truth.json")
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("key") == _truth_key(store_path, queries, k):
            return data["ids"]
    import lodestore

    t = time.perf_counter()
    with lodestore.Store.open(store_path) as store:
        checksum = opened_checksum(store_path, store)
        res = []
        for s in range(0, len(queries), 50):
            res += lodestore.exhaustive_search(store, queries[s : s + 50], k)
    ids = [[h[0] for h in hits] for hits in res]
    save_truth(store_path, queries, ids, k, checksum)
    print(f"ground truth: {len(queries)} queries in {time.perf_counter() - t:.1f} s (cached in {cache})", file=sys.stderr)
    return ids


def raw_truth(bundle: Path, n: int) -> list[list[str]] | None:
    """Top-10 ids by exact MaxSim over the uncompressed bundle (tools/ground_truth.py), if computed."""
    path = bundle / "truth_k100.npy"
    if not path.exists():
        print(f"(no {path}: run python -m tools.ground_truth {bundle} for end-to-end recall)", file=sys.stderr)
        return None
    top = np.load(path)[:n, :10]
    ids_file = bundle / "ids.txt"
    ids = ids_file.read_text().splitlines() if ids_file.exists() else None
    return [[ids[i] if ids else str(i) for i in row] for row in top.tolist()]


def recall(results: list[list[str]], reference: list[list[str]], k: int = 10) -> float:
    return float(np.mean([len(set(r[:k]) & set(t[:k])) / k for r, t in zip(results, reference)]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_search", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("store", type=Path)
    p.add_argument("--budgets", default="all,64MB,16MB",
                   help="comma-separated memory budgets, one row each; BUDGET:prefetch / BUDGET:sync force the prefetcher on / off")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--ndocs", type=int, default=None)
    p.add_argument("--cold", action="store_true", help="evict the store from the page cache before every query")
    p.add_argument("--memory-limit", default=None,
                   help="comma-separated memory limits, one row each per budget (cgroup v1, page cache counted): "
                        "a size (1GB) for the whole process, or cache=F: the process after opening + F x the store")
    p.add_argument("--hints", default=None, choices=["on", "off", "both"],
                   help="kernel read hints (Searcher read_hints) on, off, or a row each; default: the Searcher's")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prefilter", default=None,
                   help="Searcher prefilter: candidates per survivor kept before centroid interaction, or 'none'")
    p.add_argument("--out", type=Path, default=None, help="also write the rows (with each query's top-10 ids) as JSON here")
    p.add_argument("--no-truth", action="store_true",
                   help="skip exhaustive search over the store (R@10 store '-'; a huge store's truth can come later: "
                        "python -m tools.synthetic_store store-truth)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    queries = np.load(args.bundle / "queries.npy")[: args.queries]
    reference = None if args.no_truth else truth(args.store, queries)
    raw = raw_truth(args.bundle, len(queries))
    import lodestore

    with lodestore.Store.open(args.store) as store:
        st = store.stats()
    rows = []
    limits = args.memory_limit.split(",") if args.memory_limit else [None]
    hints = {None: [None], "on": [True], "off": [False], "both": [False, True]}[args.hints]
    if args.memory_limit:
        from tools.memlimit import unavailable

        why = unavailable("memory")
        if why:
            p.error(f"--memory-limit: cannot set a memory limit here: {why}")
    configs = [(spec, lim, h) for spec in args.budgets.split(",") for lim in limits for h in hints]
    for spec, lim, hint in configs:
        spec_main, _, threads = spec.partition("@")
        budget, _, mode = spec_main.partition(":")
        cfg = {"bundle": str(args.bundle), "store": str(args.store), "budget": budget, "queries": len(queries),
               "prefetch": {"prefetch": True, "sync": False, "": None}[mode],
               "nprobe": args.nprobe, "ndocs": args.ndocs, "cold": args.cold, "batch": args.batch,
               "threads": int(threads) if threads else None, "memory_limit": lim, "hints": hint,
               "prefilter": args.prefilter}
        if not args.cold and lim is None:  # warm rows start with the store's files in the page cache
            from tools import memstat

            memstat.warm([args.store])
        out = subprocess.run([sys.executable, "-m", "tools.bench_search", "x", "x", "--child", json.dumps(cfg)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results = r["results"] if args.out else r.pop("results")  # kept in --out: recall can follow the truth
        r["recall"] = recall(results, reference) if reference is not None else None
        r["recall_raw"] = recall(results, raw) if raw is not None else None
        r["budget"] = spec + (f" limit {lim}" if lim else "") + ({True: " hints", False: " no hints"}.get(hint, ""))
        rows.append(r)
    print(f"\nstore: {args.store} ({st['tokens']:,} tokens, {st['documents']:,} docs, K={st['centroids']}, "
          f"nbits={st['nbits']}, {st['bytes_per_token']:.2f} B/token on disk); queries: {len(queries)}; "
          f"cache: {'cold (fadvise DONTNEED before each query)' if args.cold else 'warm'}")
    head = ("budget", "placement", "threads", "R@10 store", "R@10 raw", "p50 ms", "p95 ms", "QPS", "CPU ms/q", "batch ms/q",
            "RSS MB", "anon", "file", "index MB", "scored/q", "KB read/q", "disk KB/q", "rows KB/q", "amplif.", "calls/q",
            "hit rate", "read hit", "io wait ms/q", "load")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = (r["budget"], r["placement"], str(r["threads"]), f"{r['recall']:.3f}" if r["recall"] is not None else "-",
                 f"{r['recall_raw']:.3f}" if r["recall_raw"] is not None else "-", f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}",
                 f"{r['qps']:.0f}", f"{r['cpu_ms']:.1f}", f"{r['batch_ms_per_query']:.1f}" if r["batch_ms_per_query"] else "-",
                 f"{r['rss_mb']:.0f}", f"{r['rss_anon_mb']:.0f}", f"{r['rss_file_mb']:.0f}", f"{r['index_mb']:.1f}", f"{r['scored_per_query']:.0f}",
                 f"{r['bytes_read_per_query'] / 1e3:.0f}", f"{r['disk_read_per_query'] / 1e3:.0f}",
                 f"{r['row_bytes_per_query'] / 1e3:.0f}",
                 f"{r['bytes_read_per_query'] / r['row_bytes_per_query']:.2f}" if r["row_bytes_per_query"] else "-",
                 f"{r['read_calls_per_query']:.0f}", f"{r['hit_rate']:.2f}", f"{r['read_hit_rate']:.2f}", f"{r['io_wait_ms']:.1f}",
                 f"{r['loadavg']:.1f}")
        print("| " + " | ".join(cells) + " |")
    cached = next((r for r in rows if r["memory_limit"] and r["memory_limit"].startswith("cache=")
                   and float(r["memory_limit"][6:]) >= 1), None)
    if cached:
        print("\nratios against the first whole-store-cached row of this run (" + cached["budget"] + "):")
        for r in rows:
            if r is not cached:
                print(f"  {r['budget']}: p50 x{r['p50_ms'] / cached['p50_ms']:.2f}, p95 x{r['p95_ms'] / cached['p95_ms']:.2f}")
    ram = next((r for r in rows if r["placement"] == "all-in-RAM"), None)
    if ram:
        print("\nratios against the all-in-RAM row of this run:")
        for r in rows:
            if r is not ram:
                print(f"  {r['budget']:>8}: p50 x{r['p50_ms'] / ram['p50_ms']:.2f}, "
                      f"index memory x{r['index_mb'] / max(ram['index_mb'], 1e-9):.3f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
