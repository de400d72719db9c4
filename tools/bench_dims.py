"""Dimension reduction of a real embedding bundle: nDCG@10 and bytes/token for none / PCA / random.

    python -m tools.bench_dims BUNDLE [--dims 128,64] [--nbits 2] [--queries N] [--work DIR] [--collection DIR]

BUNDLE comes from tools/encode_collection (docs.npy, doclens.npy, ids.txt,
queries.npy, query_ids.txt, qrels.tsv). For each variant it builds a store
(projecting documents and queries with store._projection, the code stores use),
then scores the judged queries with the engine (default settings) and with
exhaustive MaxSim over the same store; metrics from ir-measures. Prints one
table; the "none" row is the baseline the ratios compare with. With
--collection (the BEIR directory the bundle came from) the unreduced store is
also scored with queries encoded without [MASK] padding (row "none, [PAD]
queries"): ColBERT's query augmentation on vs off.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def projected_bundle(src: Path, out: Path, matrix: np.ndarray | None) -> None:
    """A copy of the bundle's documents (float16) projected by `matrix` (or unchanged)."""
    out.mkdir(parents=True)
    docs = np.load(src / "docs.npy", mmap_mode="r")
    dim = docs.shape[1] if matrix is None else matrix.shape[1]
    dst = np.lib.format.open_memmap(out / "docs.npy", mode="w+", dtype=np.float16, shape=(len(docs), dim))
    from lodestore.store._projection import project

    for s in range(0, len(docs), 1 << 17):
        block = np.asarray(docs[s : s + (1 << 17)], dtype=np.float32)
        dst[s : s + len(block)] = block if matrix is None else project(block, matrix)
    dst.flush()
    del dst
    shutil.copy(src / "doclens.npy", out / "doclens.npy")
    shutil.copy(src / "ids.txt", out / "ids.txt")


def evaluate(store_path: Path, queries: np.ndarray, qids: list[str], qrels_path: Path) -> dict[str, float]:
    """nDCG@10 and R@100 of the engine and of exhaustive MaxSim on one store, engine ms/query, bytes/token."""
    import lodestore
    from lodestore.collection import read_qrels
    from lodestore.evaluate import measure

    qrels = read_qrels(qrels_path)
    out = {}
    with lodestore.Store.open(store_path) as store, lodestore.Searcher(store) as searcher:
        t0 = time.perf_counter()
        runs = {"engine": searcher.search(list(queries), k=100)}
        out["engine_ms"] = 1000 * (time.perf_counter() - t0) / len(queries)
        runs["exhaustive"] = lodestore.exhaustive_search(store, list(queries), k=100)
        for name, results in runs.items():
            for m, value in measure(qids, results, qrels, ("nDCG@10", "R@100")).items():
                out[f"{name} {m}"] = value
        stats = store.stats()
        out["bytes_per_token"] = stats["bytes_per_token"]
        out["token_bytes_per_token"] = stats["token_bytes_per_token"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_dims", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--dims", default="128,64")
    p.add_argument("--nbits", type=int, default=2)
    p.add_argument("--queries", type=int, default=None)
    p.add_argument("--sample", type=int, default=1 << 16, help="token vectors PCA is fitted on")
    p.add_argument("--work", type=Path, default=None, help="where stores are built (default: a temp dir, removed)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--collection", type=Path, default=None, help="BEIR dir of the bundle: adds a no-[MASK]-padding row")
    args = p.parse_args(argv)

    import lodestore
    from lodestore.store._projection import fit_projection, project

    queries = np.load(args.bundle / "queries.npy")[: args.queries]
    qids = (args.bundle / "query_ids.txt").read_text(encoding="utf-8").splitlines()[: len(queries)]
    docs = np.load(args.bundle / "docs.npy", mmap_mode="r")
    rng = np.random.default_rng(0)
    sample = np.asarray(docs[np.sort(rng.choice(len(docs), min(args.sample, len(docs)), replace=False))], np.float32)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_dims-"))
    variants: list[tuple[str, np.ndarray | None]] = [("none", None)]
    for d in (int(x) for x in args.dims.split(",") if x):
        variants += [(f"pca-{d}", fit_projection("pca", sample, d)), (f"random-{d}", fit_projection("random", sample, d))]
    rows = []
    try:
        for name, matrix in variants:
            bundle, store_path = work / f"{name}.bundle", work / f"{name}.store"
            for path in (bundle, store_path):
                shutil.rmtree(path, ignore_errors=True)
            projected_bundle(args.bundle, bundle, matrix)
            dim = docs.shape[1] if matrix is None else matrix.shape[1]
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with lodestore.Store.create(store_path, dim=dim, nbits=args.nbits) as store:
                    store.add_embeddings(bundle, progress=False)
            build_s = time.perf_counter() - t0
            q = queries if matrix is None else project(queries, matrix)
            row = {"variant": name, "dim": dim, "build_s": build_s, **evaluate(store_path, q, qids, args.bundle / "qrels.tsv")}
            rows.append(row)
            if matrix is None and args.collection is not None:
                from lodestore.text import Encoder
                from lodestore.collection import Collection

                texts = Collection.load(args.collection).queries
                plain = Encoder.default(mask_query_padding=False).encode_queries([texts[q] for q in qids])
                rows.append({**row, "variant": "none, [PAD] queries",
                             **evaluate(store_path, plain, qids, args.bundle / "qrels.tsv")})
            shutil.rmtree(bundle, ignore_errors=True)
            print(f"  done {name}: engine nDCG@10 {row['engine nDCG@10']:.4f}", file=sys.stderr, flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    base = rows[0]
    print(f"\n{args.bundle} ({len(queries)} queries, nbits={args.nbits})\n")
    print("| variant | dim | bytes/token (all) | token B/token | vs none | nDCG@10 engine | nDCG@10 exhaustive | "
          "ratio vs none | R@100 engine | R@100 exhaustive | engine ms/q | build s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['dim']} | {r['bytes_per_token']:.1f} | {r['token_bytes_per_token']:.1f} | "
              f"{r['token_bytes_per_token'] / base['token_bytes_per_token']:.2f} | {r['engine nDCG@10']:.4f} | "
              f"{r['exhaustive nDCG@10']:.4f} | {r['engine nDCG@10'] / base['engine nDCG@10']:.3f} | "
              f"{r['engine R@100']:.4f} | {r['exhaustive R@100']:.4f} | {r['engine_ms']:.1f} | {r['build_s']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
