"""Metadata filters: selectivity vs latency and recall@10 against exhaustive MaxSim over the same documents.

    python -m tools.bench_filters metadata BUNDLE OUT.jsonl [--seed 0]
    lodestore build STORE --embeddings BUNDLE --metadata OUT.jsonl
    nice -n 10 python -m tools.bench_filters run BUNDLE STORE [--queries 100] [--selectivities 0.001,0.01,0.1,0.5,1]

`metadata` assigns synthetic fields to the bundle's documents with a fixed seed: `rank`
(int, a random permutation of 0..N-1, so `rank < m` admits exactly m documents), `year`
(int), `lang` (str, 5 values), `score` (float) and `tags` (0-3 of 10 strings). `run` opens
the store with the default Searcher and, query by query, times the unfiltered search and
the search with `where="rank < ?"` at every selectivity in turn (round robin, so machine
load hits every setting alike). Recall@10 of each is against the top 10 of exhaustive exact
MaxSim over the compressed store restricted to the same documents (one exhaustive pass
scores every document for every query). Printed: a markdown table, the unfiltered p50 of the
same run, and the resident bytes per document of the metadata columns.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

LANGS = ["en", "fr", "de", "es", "zh"]


def write_metadata(bundle: Path, out: Path, seed: int) -> int:
    n = len(np.load(bundle / "doclens.npy"))
    rng = np.random.default_rng(seed)
    rank = rng.permutation(n).tolist()
    year = rng.integers(1990, 2025, n).tolist()
    lang = rng.integers(0, len(LANGS), n).tolist()
    score = rng.random(n).round(6).tolist()
    ntags = rng.integers(0, 4, n).tolist()
    with open(out, "w", encoding="utf-8") as f:
        for i in range(n):
            tags = sorted({f"t{t}" for t in rng.integers(0, 10, ntags[i]).tolist()})
            f.write(json.dumps({"rank": rank[i], "year": year[i], "lang": LANGS[lang[i]], "score": score[i],
                                "tags": tags}) + "\n")
    return n


def percentile_ms(times: list[float], p: float) -> float:
    return 1000 * float(np.percentile(times, p))


def run(bundle: Path, store_path: Path, n_queries: int, sels: list[float], k: int = 10) -> str:
    import lodestore
    from lodestore.engine import exhaustive_search

    queries = list(np.load(bundle / "queries.npy")[:n_queries].astype(np.float32))
    lines = []
    with lodestore.Store.open(store_path) as store:
        if store.metadata_fields.get("rank") != "int":
            raise SystemExit(f"{store_path}: no int field 'rank'; build it with --metadata from `bench_filters metadata`")
        ids = store.ids()
        n = len(ids)
        rank = {i: m["rank"] for i, m in zip(ids, store.get_metadata(ids))}
        t0 = time.perf_counter()
        full = exhaustive_search(store, queries, k=n)  # every document's exact score, best first, for every query
        truth_s = time.perf_counter() - t0
        limits = [max(1, int(round(s * n))) for s in sels]
        truth = [[[i for i, _ in ranked if rank[i] < m][:k] for ranked in full] for m in limits]
        del full
        with lodestore.Searcher(store) as searcher:
            for q in queries[:5]:  # warm-up, and the metadata columns loaded
                searcher.search(q, k)
                searcher.search(q, k, where="rank < ?", params=[limits[0]])
            times: list[list[float]] = [[] for _ in range(len(sels) + 1)]
            recall: list[list[float]] = [[] for _ in sels]
            for qi, q in enumerate(queries):
                for j in range(len(sels) + 1):
                    t0 = time.perf_counter()
                    if j == 0:
                        searcher.search(q, k)
                    else:
                        hits = searcher.search(q, k, where="rank < ?", params=[limits[j - 1]])
                    times[j].append(time.perf_counter() - t0)
                    if j:
                        want = truth[j - 1][qi]
                        recall[j - 1].append(len({i for i, _ in hits} & set(want)) / len(want))
            meta_bytes = searcher.stats()["metadata_bytes"]
            per_field = {f: sum(seg.metadata().column(f, t).nbytes for seg in searcher.corpus.segments)
                         for f, t in store.metadata_fields.items()}
    base = percentile_ms(times[0], 50)
    lines.append("| selectivity | matching documents | p50 ms | p95 ms | p50 / unfiltered p50 | recall@10 |")
    lines.append("|---|---|---|---|---|---|")
    lines.append(f"| unfiltered | {n:,} | {base:.1f} | {percentile_ms(times[0], 95):.1f} | 1.00 | |")
    for j, (s, m) in enumerate(zip(sels, limits), 1):
        p50 = percentile_ms(times[j], 50)
        lines.append(f"| {s:.1%} | {m:,} | {p50:.1f} | {percentile_ms(times[j], 95):.1f} | {p50 / base:.2f} | "
                     f"{np.mean(recall[j - 1]):.4f} |")
    lines.append("")
    lines.append(f"{len(queries)} queries, k={k}, {n:,} documents, {store.manifest.tokens:,} tokens; unfiltered p50 "
                 f"{base:.1f} ms in the same run; exhaustive ground truth took {truth_s:.0f} s.")
    fields = ", ".join(f"{f} {b / n:.1f}" for f, b in per_field.items())
    lines.append(f"Metadata columns resident: {meta_bytes / n:.1f} bytes per document ({fields}).")
    lines.append(f"Machine: {platform.machine()}, load average {' '.join(f'{x:.1f}' for x in _load())}.")
    return "\n".join(lines)


def _load() -> tuple[float, ...]:
    import os

    return os.getloadavg()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("metadata", help="write synthetic metadata (JSONL) for a bundle's documents")
    m.add_argument("bundle", type=Path)
    m.add_argument("out", type=Path)
    m.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="time filtered searches against a store built with that metadata")
    r.add_argument("bundle", type=Path)
    r.add_argument("store", type=Path)
    r.add_argument("--queries", type=int, default=100)
    r.add_argument("--selectivities", default="0.001,0.01,0.1,0.5,1")
    args = ap.parse_args(argv)
    if args.cmd == "metadata":
        print(f"wrote metadata of {write_metadata(args.bundle, args.out, args.seed)} documents to {args.out}")
        return 0
    print(run(args.bundle, args.store, args.queries, [float(s) for s in args.selectivities.split(",")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
