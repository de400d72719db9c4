"""Sharded lodestore: 1, 2, 4, 8 shards of one bundle, in-process (threads) and on a local Ray cluster.

    nice -n 10 .venv/bin/python -m tools.bench_shards BUNDLE --work DIR [--shards 1,2,4,8] [--modes threads,ray]
        [--queries 100] [--k 10] [--out rows.json] [--build-only]

Builds one sharded store per shard count under DIR (reused when there): the 1-shard store
trains the codec, the others adopt it (Store.adopt_codec on shard 0 before the first add),
so every store holds the same compressed corpus and exhaustive search over the 1-shard store
is the truth for all. Each (shards, mode) is measured in a fresh child process: 5 warm-up
queries; every query once, one at a time (p50/p95 ms); the queries in batches of 32 (QPS);
recall@10 against the exhaustive truth; RSS of the searching process (threads) or of each
shard's actor process (Ray: a local cluster of one node started in the child, num_cpus 2),
and each shard's Searcher resident bytes. Ray's fan-out overhead = its p50 minus the threads
p50 at the same shard count. Results: docs/BENCHMARKS.md, "Shards".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WARMUP = 5
BATCH = 32


def build(bundle: Path, work: Path, n: int) -> dict:
    """The n-shard store of `bundle` under work (built once; reused after)."""
    from lodestore.sharded import ShardedStore

    root = work / f"s{n}"
    if (root / "sharded.json").exists():
        return {"shards": n, "build_s": None, "root": str(root)}
    import faiss

    faiss.omp_set_num_threads(1)  # k-means on one thread: OpenMP spin-waits on a shared box (builds are not measured)
    t0 = time.perf_counter()
    with ShardedStore.create(root, n_shards=n, dim=_dim(bundle), seed=0) as s:
        if n > 1:  # the 1-shard store's codec: every store holds the same compressed corpus
            with ShardedStore.open(work / "s1") as ref:
                s.shards[0].adopt_codec(ref.shards[0].codec_state())
        s.add_embeddings(bundle, progress=False)
        stats = s.stats()
    return {"shards": n, "build_s": time.perf_counter() - t0, "root": str(root),
            "bytes_on_disk": stats["bytes_on_disk"], "tokens": stats["tokens"]}


def _dim(bundle: Path) -> int:
    return int(np.load(bundle / "docs.npy", mmap_mode="r").shape[1])


def truth(bundle: Path, work: Path, queries: np.ndarray, k: int) -> list[list[str]]:
    """Exhaustive top-k ids over the 1-shard store (cached beside it)."""
    cache = work / f"truth_k{k}_q{len(queries)}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from lodestore.sharded import ShardedSearcher

    with ShardedSearcher(work / "s1", threads=1) as s:
        ids = [[d for d, _ in hits] for hits in s.search(list(queries), k=k, exhaustive=True)]
    cache.write_text(json.dumps(ids))
    return ids


def measure(root: Path, mode: str, queries: np.ndarray, k: int, want: list[list[str]]) -> dict:
    """One (store, mode) in this process: latency, QPS, recall, memory."""
    from lodestore.sharded import ShardedSearcher
    from lodestore.server._backend import process_rss

    address = None
    if mode == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 << 20)
        address = "local"
    base_rss = process_rss()
    t0 = time.perf_counter()
    searcher = ShardedSearcher(root, ray_address=address, threads=1)
    open_s = time.perf_counter() - t0
    qs = list(queries)
    for q in qs[:WARMUP]:
        searcher.search(q, k=k)
    times, got = [], []
    for q in qs:
        t = time.perf_counter()
        got.append([d for d, _ in searcher.search(q, k=k)])
        times.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    for i in range(0, len(qs), BATCH):
        searcher.search(qs[i : i + BATCH], k=k)
    qps = len(qs) / (time.perf_counter() - t)
    per = searcher.stats()["per_shard"]
    recall = float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)]))
    rss = process_rss()  # with the shards open (after close() much of it is freed)
    searcher.close()
    row = {"shards": len(per), "mode": mode, "open_s": open_s, "p50_ms": float(np.percentile(times, 50)),
           "p95_ms": float(np.percentile(times, 95)), "qps_batch32": qps, f"recall@{k}": recall,
           "searcher_resident_mb": [p.get("resident_bytes", 0) / 1e6 for p in per],
           "load": os.getloadavg()[0]}
    if mode == "ray":
        row["actor_rss_mb"] = [p["process_rss_bytes"] / 1e6 for p in per]
        row["total_rss_mb"] = sum(row["actor_rss_mb"])
        import ray

        ray.shutdown()
    else:
        row["process_rss_mb"] = rss / 1e6
        row["total_rss_mb"] = (rss - base_rss) / 1e6  # what opening and searching the shards added
    return row


def child(args: argparse.Namespace) -> int:
    spec = json.loads(args.child)
    queries = np.load(spec["queries"])[: spec["n_queries"]]
    want = json.loads(Path(spec["truth"]).read_text())
    print(json.dumps(measure(Path(spec["root"]), spec["mode"], queries, spec["k"], want)))
    return 0


def table(rows: list[dict], k: int) -> str:
    threads = {r["shards"]: r for r in rows if r["mode"] == "threads"}
    out = [f"| shards | mode | p50 ms | p95 ms | QPS (batch {BATCH}) | recall@{k} | Searcher resident MB per shard | "
           "RSS MB per shard | RSS MB total | Ray overhead p50 ms | load |", "|---|" * 1 + "---|" * 10]
    for r in rows:
        per = r["actor_rss_mb"] if r["mode"] == "ray" else [r["total_rss_mb"] / r["shards"]]
        over = f"{r['p50_ms'] - threads[r['shards']]['p50_ms']:+.1f}" if r["mode"] == "ray" and r["shards"] in threads \
            else "-"
        out.append(f"| {r['shards']} | {r['mode']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['qps_batch32']:.1f} | "
                   f"{r[f'recall@{k}']:.3f} | {np.mean(r['searcher_resident_mb']):.1f} | {np.mean(per):.0f} | "
                   f"{r['total_rss_mb']:.0f} | {over} | {r['load']:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_shards", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path, nargs="?")
    p.add_argument("--work", type=Path)
    p.add_argument("--shards", default="1,2,4,8")
    p.add_argument("--modes", default="threads,ray")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--build-only", action="store_true",
                   help="build the stores and the truth, measure nothing (e.g. at low priority ahead of a quiet run)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.bundle is None or args.work is None:
        p.error("BUNDLE and --work are required")
    counts = sorted({int(n) for n in args.shards.split(",")} | {1})
    args.work.mkdir(parents=True, exist_ok=True)
    builds = [build(args.bundle, args.work, n) for n in counts]
    for b in builds:
        print(f"built {b}", file=sys.stderr)
    queries = np.load(args.bundle / "queries.npy")[: args.queries]
    truth(args.bundle, args.work, queries, args.k)
    if args.build_only:
        return 0
    rows = []
    for n in counts:
        for mode in args.modes.split(","):
            spec = {"root": str(args.work / f"s{n}"), "mode": mode, "queries": str(args.bundle / "queries.npy"),
                    "n_queries": args.queries, "k": args.k,
                    "truth": str(args.work / f"truth_k{args.k}_q{len(queries)}.json")}
            out = subprocess.run([sys.executable, "-m", "tools.bench_shards", "--child", json.dumps(spec)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{n} shards, {mode}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    result = {"builds": builds, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(table(rows, args.k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
