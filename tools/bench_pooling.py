"""Token pooling: quality, size, build time and latency at each pool factor (docs/BENCHMARKS.md "Token pooling").

    nice -n 10 python -m tools.bench_pooling [--collections scifact,cranfield,medline] [--factors 1,2,3,4]
        [--data /work/shared/data] [--work /work/bench/pooling] [--synthetic BUNDLE] [--queries N] [--max-docs N]
        [--codec scalar|pq] [--nbits N]

Each BEIR collection (DATA/NAME) is encoded ONCE with the packaged encoder
(tools/encode_collection) into WORK/NAME/bundle, the cache every later run
reuses. For each factor a store is then built from that cache the way the
Index builds one (Store.add_embeddings with pool_factor, the encoder identity
recorded, default codec; no text payloads, so bytes are the vectors' own), and
the judged test queries are searched with default settings: nDCG@10 and R@100
(ir-measures, a k=100 run), stored tokens, bytes on disk, build seconds, p50
latency of one k=10 query. Pooling cost is also timed alone (pool_batch over
the cached vectors) against the encoder's time for the same documents
(bundle.json), both per 1000 documents.

--synthetic BUNDLE (tools/make_bundle): stores at each factor, and the search
loss pooling adds: recall@10 of exhaustive MaxSim and of the engine over each
pooled store against exhaustive MaxSim over the unpooled (factor 1) store.
Prints markdown tables; WORK/results-NAMES.json keeps the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def ensure_bundle(collection: Path, out: Path, max_docs: int | None = None) -> Path:
    """The cached embedding bundle of `collection` (its first `max_docs` documents), encoded now if not there yet."""
    if not (out / "bundle.json").exists():
        from tools import encode_collection

        shutil.rmtree(out, ignore_errors=True)
        print(f"encoding {collection} -> {out} (once)", file=sys.stderr, flush=True)
        limit = [] if max_docs is None else ["--max-docs", str(max_docs)]
        if encode_collection.main([str(collection), str(out), "--threads", "2", *limit]) != 0:
            raise SystemExit(f"encoding {collection} failed")
    return out


def query_vectors(bundle: Path, limit: int | None) -> tuple[list[np.ndarray], list[str]]:
    """The bundle's judged queries without their all-zero [PAD] rows, as Index.query_vectors gives them."""
    queries = np.load(bundle / "queries.npy")[:limit]
    qids = (bundle / "query_ids.txt").read_text(encoding="utf-8").splitlines()[: len(queries)]
    return [q[np.any(q != 0, axis=1)].astype(np.float32) for q in queries], qids


def pooling_seconds(bundle: Path, factor: int) -> float:
    """Seconds pool_batch takes over every document of the bundle (reading and normalizing not counted)."""
    from lodestore.store import BundleSource
    from lodestore.store._pooling import pool_batch

    total = 0.0
    for _, doclens, tokens in BundleSource(bundle).batches():
        t0 = time.perf_counter()
        pool_batch(doclens, tokens, factor)
        total += time.perf_counter() - t0
    return total


def build(bundle: Path, path: Path, factor: int, codec: dict) -> float:
    """Build a store at `path` from the bundle with `factor` and `codec` (Store.create's arguments); wall seconds."""
    import lodestore

    shutil.rmtree(path, ignore_errors=True)
    info = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    dim = int(np.load(bundle / "docs.npy", mmap_mode="r").shape[1])
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with lodestore.Store.create(path, dim=dim, encoder=info.get("encoder"), pool_factor=factor, **codec) as store:
            store.add_embeddings(bundle, progress=False)
    return time.perf_counter() - t0


def search_runs(path: Path, queries: list[np.ndarray]) -> tuple[list, float]:
    """(k=100 results of every query in one batch, p50 ms of one k=10 query)."""
    import lodestore

    with lodestore.Store.open(path) as store, lodestore.Searcher(store) as searcher:
        results = searcher.search(queries, k=100)
        times = []
        for q in queries:
            t0 = time.perf_counter()
            searcher.search([q], k=10)
            times.append(1000 * (time.perf_counter() - t0))
    return results, float(np.median(times))


def collection_rows(name: str, bundle: Path, work: Path, factors: list[int], limit: int | None,
                    codec: dict) -> list[dict]:
    import lodestore
    from lodestore.collection import read_qrels
    from lodestore.evaluate import measure

    info = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    n_docs, n_tokens = int(info["n_docs"]), int(info["n_tokens"])
    encode_ms_per_1k = 1000 * n_tokens / float(info["doc_tokens_per_s"]) / n_docs * 1000
    queries, qids = query_vectors(bundle, limit)
    qrels = read_qrels(bundle / "qrels.tsv")
    rows = []
    for f in factors:
        path = work / name / f"store-f{f}"
        build_s = build(bundle, path, f, codec)
        pool_s = pooling_seconds(bundle, f) if f > 1 else 0.0
        results, p50 = search_runs(path, queries)
        with lodestore.Store.open(path) as store:
            stats = store.stats()
        row = {"collection": name, "factor": f, "docs": n_docs, "queries": len(qids), **measure(qids, results, qrels),
               "tokens": stats["tokens"], "bytes": stats["bytes_on_disk"], "build_s": build_s, "p50_ms": p50,
               "pool_ms_per_1k_docs": 1000 * pool_s / n_docs * 1000, "encode_ms_per_1k_docs": encode_ms_per_1k,
               "load": os.getloadavg()[0]}
        rows.append(row)
        print(f"  {name} f={f}: nDCG@10 {row['nDCG@10']:.4f}, {row['tokens']:,} tokens, {build_s:.0f} s; "
              f"row {json.dumps(row)}", file=sys.stderr, flush=True)
    return rows


def exact_rows(name: str, bundle: Path, factors: list[int], limit: int | None) -> list[dict]:
    """Pooling's loss alone: exact MaxSim over the uncompressed (pooled) vectors, no store, codec or engine.

    Rows: nDCG@10 and R@100 of a k=100 exact run, stored tokens, and pool_batch seconds per 1000 documents.
    """
    from lodestore.collection import read_qrels
    from lodestore.evaluate import measure
    from lodestore.store import BundleSource
    from lodestore.store._pooling import pool_batch

    info = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    queries = np.load(bundle / "queries.npy")[:limit].astype(np.float32)  # [PAD] rows are zero: they add 0
    qids = (bundle / "query_ids.txt").read_text(encoding="utf-8").splitlines()[: len(queries)]
    doc_ids = (bundle / "ids.txt").read_text(encoding="utf-8").splitlines()
    qrels = read_qrels(bundle / "qrels.tsv")
    nq, ql, dim = queries.shape
    rows = []
    for f in factors:
        lens, parts, pool_s = [], [], 0.0
        for _, doclens, tokens in BundleSource(bundle).batches():
            t0 = time.perf_counter()
            doclens, tokens = pool_batch(doclens, tokens, f)
            pool_s += time.perf_counter() - t0
            lens.append(doclens)
            parts.append(tokens)
        doclens, tokens = np.concatenate(lens), np.concatenate(parts)
        offsets = np.concatenate([[0], np.cumsum(doclens)])
        scores = np.empty((nq, len(doclens)), dtype=np.float32)
        qflat = queries.reshape(nq * ql, dim)
        start = 0
        while start < len(doclens):  # blocks of about 4096 token rows
            stop = min(max(start + 1, int(np.searchsorted(offsets, offsets[start] + 4096, side="right")) - 1), len(doclens))
            sim = (qflat @ tokens[offsets[start] : offsets[stop]].T).reshape(nq, ql, -1)
            scores[:, start:stop] = np.maximum.reduceat(sim, offsets[start:stop] - offsets[start], axis=2).sum(axis=1)
            start = stop
        top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
        results = [[(doc_ids[d], float(scores[qi, d])) for d in top[qi]] for qi in range(nq)]
        rows.append({"collection": name, "factor": f, "docs": len(doclens), "queries": nq,
                     **measure(qids, results, qrels), "tokens": int(offsets[-1]),
                     "pool_ms_per_1k_docs": 1000 * pool_s / len(doclens) * 1000,
                     "encode_ms_per_1k_docs": 1000 * int(info["n_tokens"]) / float(info["doc_tokens_per_s"]) / len(doclens) * 1000,
                     "load": os.getloadavg()[0]})
        print(f"  exact {name} f={f}: row {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    return rows


def synthetic_rows(bundle: Path, work: Path, factors: list[int], limit: int | None, codec: dict) -> list[dict]:
    """Recall@10 against exhaustive MaxSim over the unpooled store, of exhaustive and engine search per factor."""
    import lodestore

    queries = [q.astype(np.float32) for q in np.load(bundle / "queries.npy")[:limit]]
    rows, reference = [], None
    for f in sorted(set([1] + factors)):
        path = work / "synthetic" / f"store-f{f}"
        build_s = build(bundle, path, f, codec)
        with lodestore.Store.open(path) as store, lodestore.Searcher(store) as searcher:
            exact = [[d for d, _ in hits] for hits in lodestore.exhaustive_search(store, queries, 10)]
            engine = [[d for d, _ in hits] for hits in searcher.search(queries, k=10)]
            stats = store.stats()
        if reference is None:
            reference = exact

        def recall(got: list[list[str]]) -> float:
            return float(np.mean([len(set(g) & set(r)) / len(r) for g, r in zip(got, reference)]))

        rows.append({"factor": f, "tokens": stats["tokens"], "bytes": stats["bytes_on_disk"], "build_s": build_s,
                     "exhaustive_recall10": recall(exact), "engine_recall10": recall(engine),
                     "engine_vs_own_exhaustive": float(np.mean([len(set(g) & set(e)) / 10 for g, e in zip(engine, exact)]))})
        print(f"  synthetic f={f}: row {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    return [r for r in rows if r["factor"] in factors]


def print_tables(rows: list[dict], synthetic: list[dict], synthetic_name: str | None) -> None:
    if rows:
        print("\n| collection | pool factor | nDCG@10 | vs f=1 | R@100 | stored tokens | vs f=1 | bytes on disk | vs f=1 "
              "| build s | p50 ms | pool ms / 1k docs | encode ms / 1k docs |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        base: dict[str, dict] = {}
        for r in rows:
            b = base.setdefault(r["collection"], r)
            print(f"| {r['collection']} | {r['factor']} | {r['nDCG@10']:.4f} | {r['nDCG@10'] / b['nDCG@10']:.3f} | "
                  f"{r['R@100']:.4f} | {r['tokens']:,} | {r['tokens'] / b['tokens']:.2f} | {r['bytes'] / 2**20:.1f} MiB | "
                  f"{r['bytes'] / b['bytes']:.2f} | {r['build_s']:.0f} | {r['p50_ms']:.1f} | "
                  f"{r['pool_ms_per_1k_docs']:,.0f} | {r['encode_ms_per_1k_docs']:,.0f} |")
    if synthetic:
        print(f"\n{synthetic_name}: recall@10 against exhaustive MaxSim over the unpooled store\n")
        print("| pool factor | stored tokens | bytes on disk | build s | exhaustive recall@10 | engine recall@10 "
              "| engine vs own exhaustive |")
        print("|---|---|---|---|---|---|---|")
        for r in synthetic:
            print(f"| {r['factor']} | {r['tokens']:,} | {r['bytes'] / 2**20:.1f} MiB | {r['build_s']:.0f} | "
                  f"{r['exhaustive_recall10']:.4f} | {r['engine_recall10']:.4f} | {r['engine_vs_own_exhaustive']:.4f} |")


def print_exact(rows: list[dict]) -> None:
    print("\n| collection | pool factor | exact nDCG@10 | vs f=1 | exact R@100 | stored tokens | vs f=1 "
          "| pool ms / 1k docs | encode ms / 1k docs |")
    print("|---|---|---|---|---|---|---|---|---|")
    base: dict[str, dict] = {}
    for r in rows:
        b = base.setdefault(r["collection"], r)
        print(f"| {r['collection']} | {r['factor']} | {r['nDCG@10']:.4f} | {r['nDCG@10'] / b['nDCG@10']:.3f} | "
              f"{r['R@100']:.4f} | {r['tokens']:,} | {r['tokens'] / b['tokens']:.2f} | "
              f"{r['pool_ms_per_1k_docs']:,.0f} | {r['encode_ms_per_1k_docs']:,.0f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_pooling", description=__doc__.split("\n")[0])
    p.add_argument("--collections", default="scifact,cranfield,medline", help="names under --data ('' for none)")
    p.add_argument("--factors", default="1,2,3,4")
    p.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    p.add_argument("--work", type=Path, default=Path("/work/bench/pooling"), help="encoded bundles (kept) and stores")
    p.add_argument("--synthetic", type=Path, default=None, help="a tools/make_bundle bundle for the search-loss table")
    p.add_argument("--queries", type=int, default=None, help="only the first N queries of each set")
    p.add_argument("--max-docs", type=int, default=None, help="encode only the first N documents of a collection "
                   "not cached yet (its judged queries: those with a relevant document among them)")
    p.add_argument("--codec", choices=("scalar", "pq"), default=None, help="default: the store's default codec")
    p.add_argument("--nbits", type=int, default=None, choices=(1, 2, 4), help="scalar codec bits (default 2)")
    p.add_argument("--exact", action="store_true", help="no stores: exact MaxSim over the uncompressed pooled "
                   "vectors (pooling's loss alone, no codec or engine)")
    args = p.parse_args(argv)
    codec = {"codec": args.codec, "nbits": args.nbits}
    factors = [int(f) for f in args.factors.split(",") if f]
    if not factors or factors[0] != 1:
        p.error("--factors must start with 1: every other factor is compared with it")
    try:
        import faiss

        faiss.omp_set_num_threads(1)  # a shared machine: OpenMP spinning slows k-means down
    except ImportError:
        pass
    rows: list[dict] = []
    for name in (n for n in args.collections.split(",") if n):
        bundle = ensure_bundle(args.data / name, args.work / name / "bundle", args.max_docs)
        rows += (exact_rows(name, bundle, factors, args.queries) if args.exact
                 else collection_rows(name, bundle, args.work, factors, args.queries, codec))
    synthetic = synthetic_rows(args.synthetic, args.work, factors, args.queries, codec) if args.synthetic else []
    args.work.mkdir(parents=True, exist_ok=True)
    label = "-".join(n for n in args.collections.split(",") if n) or "synthetic"
    out = args.work / f"results-{label}{'-exact' if args.exact else ''}.json"
    out.write_text(json.dumps({"args": vars(args) | {"data": str(args.data), "work": str(args.work),
                                                     "synthetic": str(args.synthetic)},
                               "collections": rows, "synthetic": synthetic}, indent=2))
    if args.exact:
        print_exact(rows)
        rows = []
    print_tables(rows, synthetic, str(args.synthetic) if args.synthetic else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
