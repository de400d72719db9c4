"""Cell k-means against faiss's k-means at the same K: does a store trained by either search as well?

    nice -n 10 .venv/bin/python -m tools.bench_kmeans BUNDLE --work DIR [--queries 100] [--centroids K]

Builds two stores of BUNDLE under DIR (reused when there) with the same K, seed and default codec, one
whose centroids faiss's k-means trains and one trained by cell k-means (store/codecs/_kmeans.py
cell_kmeans: Lloyd iterations assigned through the cell search), each in a fresh child process (build
seconds, training seconds, peak RSS). For each store it then reports:

- the k-means objective on tokens of the bundle: the mean cosine of a token to its nearest centroid
  (exact, over every centroid) and its 1st percentile (the worst-served tokens);
- search, from tools/bench_search (default Searcher, warm page cache): R@10 against exhaustive search
  over the same store (search loss), R@10 against exact MaxSim over the uncompressed vectors
  (BUNDLE/truth_k100.npy from tools/ground_truth, when there), p50 ms, documents scored a query.

Results: docs/BENCHMARKS.md C20. Decides whether cell k-means may train K >= 32,768 by default.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

METHODS = ("faiss", "cell")
SAMPLE_TOKENS = 20_000


def child_build(bundle: Path, path: Path, method: str, centroids: int | None) -> dict:
    """Build one store (in this fresh process): seconds, training seconds, peak RSS."""
    import resource

    import lodestore
    from lodestore.store.codecs import _kmeans

    # the comparison is at the same K: cell k-means at every K, or faiss's at every K
    _kmeans.CELL_KMEANS_MIN_K = 1 if method == "cell" else None
    trained = {"s": 0.0}
    inner = _kmeans.train_centroids

    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            trained["s"] += time.perf_counter() - t

    _kmeans.train_centroids = timed
    import lodestore.store.codecs.pq as pq
    import lodestore.store.codecs.scalar as scalar

    pq.train_centroids = scalar.train_centroids = timed  # the codecs import it by name
    dim = int(np.load(bundle / "docs.npy", mmap_mode="r").shape[1])
    options = {"num_centroids": centroids} if centroids else {}
    t = time.perf_counter()
    with lodestore.Store.create(path, dim=dim, seed=0, **options) as store:
        store.add_embeddings(bundle, progress=False)
        st = store.stats()
    return {"method": method, "build_s": time.perf_counter() - t, "train_s": trained["s"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "K": st["centroids"], "tokens": st["tokens"]}


def objective(bundle: Path, store_path: Path, seed: int = 1) -> dict:
    """Mean cosine of SAMPLE_TOKENS bundle tokens to their nearest centroid (exact), and its 1st percentile
    (the worst-served tokens)."""
    import lodestore

    docs = np.load(bundle / "docs.npy", mmap_mode="r")
    rows = np.sort(np.random.default_rng(seed).choice(len(docs), size=min(SAMPLE_TOKENS, len(docs)), replace=False))
    x = np.asarray(docs[rows], dtype=np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    with lodestore.Store.open(store_path) as store:
        c = np.asarray(store.codec_state().codec.centroids, dtype=np.float32)
    best = np.full(len(x), -np.inf, dtype=np.float32)
    for s in range(0, len(c), 2048):  # a (SAMPLE_TOKENS, 2048) float32 block at a time: 164 MB
        np.maximum(best, (x @ c[s : s + 2048].T).max(axis=1), out=best)
    return {"mean_cos": float(best.mean()), "p01_cos": float(np.quantile(best, 0.01))}


def search_row(bundle: Path, store_path: Path, queries: int) -> dict:
    """tools/bench_search's default row (budget auto, warm) for this store."""
    out = store_path.with_name(store_path.name + ".search.json")
    done = subprocess.run([sys.executable, "-m", "tools.bench_search", str(bundle), str(store_path), "--budgets", "auto",
                           "--queries", str(queries), "--out", str(out)], check=True, capture_output=True, text=True)
    print(done.stdout, file=sys.stderr)  # bench_search's own table, for the log
    rows = json.loads(out.read_text())
    return rows[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_kmeans", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--centroids", type=int, default=None, help="K for both (default: the store's rule for the bundle)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        method, path = args.child
        print(json.dumps(child_build(args.bundle, Path(path), method, args.centroids)))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in METHODS:
        path = args.work / f"store-{method}"
        record = args.work / f"build-{method}.json"
        if not record.exists():
            cmd = [sys.executable, "-m", "tools.bench_kmeans", str(args.bundle), "--work", str(args.work),
                   "--child", method, str(path)] + (["--centroids", str(args.centroids)] if args.centroids else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            record.write_text(out.stdout.strip().splitlines()[-1])
        row = json.loads(record.read_text())
        print(f"{method}: built in {row['build_s']:.0f} s (k-means {row['train_s']:.0f} s), K={row['K']}", file=sys.stderr)
        row.update(objective(args.bundle, path))
        searched = search_row(args.bundle, path, args.queries)
        row.update({key: searched[key] for key in ("recall", "recall_raw", "p50_ms", "scored_per_query")})
        rows.append(row)
    if args.json:
        print(json.dumps(rows))
        return 0
    head = ("k-means", "K", "build s", "k-means s", "peak RSS MB", "mean cos to nearest", "1st percentile",
            "R@10 store", "R@10 raw", "p50 ms", "scored/q")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        raw = "-" if r["recall_raw"] is None else f"{r['recall_raw']:.3f}"
        print(f"| {r['method']} | {r['K']:,} | {r['build_s']:.0f} | {r['train_s']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['mean_cos']:.4f} | {r['p01_cos']:.4f} | {r['recall']:.3f} | {raw} | {r['p50_ms']:.1f} | "
              f"{r['scored_per_query']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
