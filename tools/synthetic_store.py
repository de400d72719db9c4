"""A synthetic store of any size, built while its documents are generated (no bundle on disk), with
its queries and exact ground truth beside it.

    python -m tools.synthetic_store build OUT --tokens 1e8 [--seed 8] [--segment-tokens 1e7] [--queries 100]
    python -m tools.synthetic_store truth OUT           # exact MaxSim top-100 over the uncompressed vectors
    python -m tools.synthetic_store store-truth OUT     # exhaustive top-10 over the compressed store

Both ground truths are computed a range (or segment) at a time, each range's top-k kept under
OUT/truth_parts/, so a run stopped midway (or begun while the store is still being built) goes on
from there.

OUT/ gets corpus.json (the generator's parameters: store/testing/streamed.py SyntheticCorpus),
queries.npy + query_targets.npy, store/ (the store) and, after `truth`, truth_k100.npy: the layout
tools/bench_search.py reads as a bundle (`bench_search OUT OUT/store`), without docs.npy.

The build is one add (one commit, one segment) per --segment-tokens of documents, in document order:
interrupted, it loses at most the segment being written (the store's crash guarantees) and
`build` run again goes on from the documents the store holds. The codec is trained on the
first segment's documents (the generator's blocks are independent draws of one model), with K
from the whole corpus's size (PLAID's rule) unless --centroids says otherwise. Each commit's
tokens, seconds and the process's peak RSS are appended to OUT/build.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _corpus(out: Path):
    from lodestore.store.testing.streamed import SyntheticCorpus

    return SyntheticCorpus.from_json((out / "corpus.json").read_text())


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _log_segment(out: Path, record: dict) -> None:
    """Append one commit's figures to OUT/build.jsonl: a build resumed over several runs still adds up."""
    with open(out / "build.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def build(out: Path, args: argparse.Namespace) -> int:
    import lodestore
    from lodestore.store.codecs import _kmeans

    if args.faiss_kmeans:
        _kmeans.CELL_KMEANS_MIN_K = None
    from lodestore.store.testing.streamed import SyntheticCorpus, SyntheticSource

    out.mkdir(parents=True, exist_ok=True)
    corpus = SyntheticCorpus(n_tokens=int(float(args.tokens)), dim=args.dim, seed=args.seed,
                             n_clusters=args.clusters, mean_len=args.mean_len)
    spec = out / "corpus.json"
    if spec.exists() and spec.read_text() != corpus.to_json():
        raise SystemExit(f"{spec} describes another corpus: {spec.read_text()} (use another OUT)")
    spec.write_text(corpus.to_json())
    if not (out / "queries.npy").exists():
        queries, targets = corpus.queries(args.queries, seed=args.seed + 1000)
        np.save(out / "query_targets.npy", targets)
        np.save(out / "queries.npy", queries.astype(np.float16))
        (out / "ids.txt").write_text("\n".join(corpus.ids(0, corpus.n_docs)) + "\n")
    path = out / "store"
    if path.exists():
        store = lodestore.Store.open(path, writable=True)
    else:
        from lodestore.store.codecs import default_num_centroids

        options = {"codec": args.codec} if args.codec else {}
        k = args.centroids or default_num_centroids(corpus.total_tokens)  # the whole corpus's K, not the first add's
        store = lodestore.Store.create(path, dim=corpus.dim, num_centroids=k, seed=args.seed, **options)
    per = max(1, int(float(args.segment_tokens)))
    with store:
        start = len(store)
        if start and corpus.ids(start - 1, start)[0] not in store:
            raise SystemExit(f"{path}: holds {start} documents but not the first {start} of this corpus")
        t0 = time.perf_counter()
        while start < corpus.n_docs:
            stop = int(np.searchsorted(corpus.offsets, corpus.offsets[start] + per, side="left"))
            stop = max(start + 1, min(stop, corpus.n_docs))
            t1 = time.perf_counter()
            g = store.add_source(SyntheticSource(corpus, start, stop), progress=not args.quiet)
            _log_segment(out, {"generation": g, "documents": [start, stop],
                               "tokens": int(corpus.offsets[stop] - corpus.offsets[start]),
                               "seconds": round(time.perf_counter() - t1, 1), "peak_rss_mb": _peak_rss_mb(),
                               "loadavg": os.getloadavg()[0]})
            print(f"generation {g}: documents {start:,}..{stop:,} of {corpus.n_docs:,} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            start = stop
        print(json.dumps({"store": str(path), "documents": corpus.n_docs, "tokens": corpus.total_tokens,
                          "build_s": time.perf_counter() - t0}))
    return 0


def _doc_ranges(offsets: np.ndarray, n_docs: int, per_tokens: int) -> list[tuple[int, int]]:
    """Consecutive document ranges of about per_tokens tokens each (build's cut: one commit each)."""
    ranges, start = [], 0
    while start < n_docs:
        stop = int(np.searchsorted(offsets, offsets[start] + per_tokens, side="left"))
        stop = max(start + 1, min(stop, n_docs))
        ranges.append((start, stop))
        start = stop
    return ranges


def truth(out: Path, k: int, range_tokens: int = 10_000_000) -> int:
    """Exact top-k over the regenerated uncompressed vectors, a range of ~range_tokens at a time, each
    range's top-k saved under OUT/truth_parts/ as it finishes: stopped, it goes on from there."""
    from tools.ground_truth import cached_range, merge_topk, queries_key, range_topk

    corpus = _corpus(out)
    queries = np.load(out / "queries.npy")
    key = queries_key(queries)
    t0 = time.perf_counter()
    parts = []
    for a, b in _doc_ranges(corpus.offsets, corpus.n_docs, range_tokens):
        n_tok = int(corpus.offsets[b] - corpus.offsets[a])
        parts.append(cached_range(
            out / "truth_parts" / f"raw_{key}_k{k}_{a}_{b}.npz",
            lambda a=a, b=b, n_tok=n_tok: range_topk(queries, corpus.chunks(a, b), a, b - a, n_tok, k,
                                                     desc=f"exact MaxSim {a:,}..{b:,}")))
    top, _ = merge_topk(parts, k)
    np.save(out / f"truth_k{k}.npy", top)
    print(f"exact ground truth of {len(top)} queries in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


def store_truth(out: Path, k: int) -> int:
    """Exhaustive exact MaxSim top-k over the compressed store (the search-loss reference), segment by
    segment, each segment's top-k saved under OUT/truth_parts/ (segments never change once committed:
    a stopped run, or one after another commit, computes only the segments it lacks), then written
    where tools/bench_search.py looks for it (STORE.truth.json, keyed by the manifest and the queries)."""
    import lodestore
    from tools.bench_search import opened_checksum, save_truth
    from tools.ground_truth import cached_range, merge_topk, queries_key, range_topk

    path = out / "store"
    queries = np.load(out / "queries.npy")
    key = queries_key(queries)
    t0 = time.perf_counter()
    with lodestore.Store.open(path) as store:
        checksum = opened_checksum(path, store)  # the generation computed, whatever commits meanwhile
        if store.input_dim != store.codec.dim:
            raise SystemExit(f"{path}: reduces dimensions; exhaustive_search handles that, this tool does not")
        parts, ids, base = [], [], 0
        for si, seg in enumerate(store.segments):
            if store.deleted(si).any():
                raise SystemExit(f"{path}: segment {seg.name} has deleted documents; use lodestore.exhaustive_search")

            def compute(seg=seg):
                def pieces():
                    start = 0
                    while start < seg.n_docs:
                        stop = min(seg.n_docs, start + 2048)
                        codes, res, lens, _ = seg.read_docs(np.arange(start, stop))
                        yield start, lens, store.codec.decode(codes, res)
                        start = stop
                return range_topk(queries, pieces(), 0, seg.n_docs, int(seg.doc_offsets[-1]), k,
                                  normalize=False, desc=f"exhaustive {seg.name}")

            docs, scores = cached_range(out / "truth_parts" / f"store_{key}_k{k}_{seg.name}.npz", compute)
            parts.append((docs + base, scores))
            ids.extend(seg.ids())
            base += seg.n_docs
        top, _ = merge_topk(parts, k)
    save_truth(path, queries, [[ids[d] for d in row] for row in top.tolist()], k, checksum)
    print(f"exhaustive search over the store for {len(top)} queries in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.synthetic_store", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="generate and build (or go on building) OUT/store")
    b.add_argument("out", type=Path)
    b.add_argument("--tokens", required=True, help="corpus size in tokens, e.g. 1e8")
    b.add_argument("--dim", type=int, default=128)
    b.add_argument("--seed", type=int, default=8)
    b.add_argument("--clusters", type=int, default=None, help="generator clusters (default: ~2 sqrt(tokens))")
    b.add_argument("--mean-len", type=int, default=80)
    b.add_argument("--queries", type=int, default=100)
    b.add_argument("--segment-tokens", default="1e7", help="tokens per add (one commit each)")
    b.add_argument("--centroids", type=int, default=None, help="K (default: PLAID's rule on the corpus's tokens)")
    b.add_argument("--codec", default=None)
    b.add_argument("--cell-kmeans", action="store_true",
                   help="the default since cell k-means trains K >= 16,384 (BENCHMARKS C20); kept so older commands run")
    b.add_argument("--faiss-kmeans", action="store_true",
                   help="train the centroids with faiss's k-means at any K (the default before BENCHMARKS C20's comparison)")
    b.add_argument("--quiet", action="store_true")
    t = sub.add_parser("truth", help="exact MaxSim top-k over the uncompressed (regenerated) vectors")
    t.add_argument("out", type=Path)
    t.add_argument("-k", type=int, default=100)
    t.add_argument("--range-tokens", default="1e7", help="tokens a range (each range's top-k is kept as it finishes)")
    s = sub.add_parser("store-truth", help="exhaustive exact MaxSim top-k over the compressed store "
                                           "(the reference tools/bench_search.py measures search loss against)")
    s.add_argument("out", type=Path)
    s.add_argument("-k", type=int, default=10)
    args = p.parse_args(argv)
    if args.cmd == "build":
        return build(args.out, args)
    return truth(args.out, args.k, int(float(args.range_tokens))) if args.cmd == "truth" else store_truth(args.out, args.k)


if __name__ == "__main__":
    sys.exit(main())
