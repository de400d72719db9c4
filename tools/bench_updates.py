"""Updates on a real bundle: the drift figure per segment, what it costs, and compaction.

    python -m tools.bench_updates BUNDLE WORKDIR [--delete 0.3] [--queries 50] [--foreign-docs 100]

1. Drift. A store from the first half of the bundle's documents (this add trains the
   codec), then the second half (same collection, unseen by k-means), then a *foreign*
   segment: random isotropic Gaussian documents of the bundle's dim (nothing like the
   training data). Prints each segment's share of tokens far from every centroid.
2. Drift cost. Over the second half's tokens, in this process: the time of
   `codec.encode` (what every add pays) and of the drift count (`store/_drift.py`).
3. Compaction. A random fraction of the bundle's documents (and the foreign segment) is
   deleted, then `compact()`: seconds (with the second half's add, same run, for
   scale: compaction copies rows and re-encodes nothing), bytes on disk before and
   after, and the Searcher's top-10 for the bundle's queries before and after
   (default settings; the same ids are expected, scores bit-identical).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def _docs(bundle: Path) -> tuple[list[str], list[np.ndarray]]:
    tokens = np.load(bundle / "docs.npy", mmap_mode="r")
    lens = np.load(bundle / "doclens.npy")
    ids_file = bundle / "ids.txt"
    ids = ids_file.read_text().splitlines() if ids_file.exists() else [str(i) for i in range(len(lens))]
    bounds = np.concatenate([[0], np.cumsum(lens)])
    return ids, [np.asarray(tokens[a:b], dtype=np.float32) for a, b in zip(bounds[:-1], bounds[1:])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_updates", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("workdir", type=Path)
    p.add_argument("--delete", type=float, default=0.3, help="fraction of the bundle's documents deleted before compacting")
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--foreign-docs", type=int, default=100)
    p.add_argument("--centroids", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from lodestore import store
    from lodestore.engine import Searcher
    from lodestore.store import _drift
    from lodestore.store._ingest import normalize_document

    ids, docs = _docs(args.bundle)
    dim = docs[0].shape[1]
    half = len(docs) // 2
    rng = np.random.default_rng(args.seed)
    foreign_ids = [f"foreign{i}" for i in range(args.foreign_docs)]
    foreign = [rng.standard_normal((int(rng.choice([len(d) for d in docs])), dim)).astype(np.float32)
               for _ in foreign_ids]
    path = args.workdir / "store"
    shutil.rmtree(path, ignore_errors=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = []
    with store.Store.create(path, dim=dim, nbits=2, num_centroids=args.centroids, seed=args.seed) as s:
        t = time.perf_counter()
        s.add(ids[:half], docs[:half])
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        s.add(ids[half:], docs[half:])
        t_second = time.perf_counter() - t
        s.add(foreign_ids, foreign)
        stats = s.stats()
        drift = stats["drift"]
        names = list(drift["segments"])
        labels = ["first half (trains the codec)", "second half (same collection)", "foreign (random Gaussian)"]
        out.append(f"\nbundle: {args.bundle}; {len(docs)} documents, {sum(len(d) for d in docs)} tokens, dim {dim}; "
                   f"K {stats['centroids']}; load {os.getloadavg()[0]:.1f}")
        out.append(f"drift threshold (p99 residual norm, first-add tokens k-means did not see): {drift['threshold']:.4f}\n")
        out.append("| segment | documents | tokens | tokens far from every centroid |")
        out.append("|---|---|---|---|")
        for name, label, e in zip(names, labels, s.manifest.segments):
            out.append(f"| {label} | {e.documents} | {e.tokens} | {drift['segments'][name]:.2%} |")

        # 2. cost of the drift count against the encode every add does
        codec = s.codec
        tokens = np.concatenate([normalize_document(i, d, dim) for i, d in zip(ids[half:], docs[half:])])
        t = time.perf_counter()
        codes, _ = codec.encode(tokens)
        t_encode = time.perf_counter() - t
        limit = drift["threshold"]
        t = time.perf_counter()
        _drift.count_far(codec.centroids, tokens, codes, limit)
        t_drift = time.perf_counter() - t
        out.append(f"\n| step, over the second half's {len(tokens)} tokens | seconds | vs encode |")
        out.append("|---|---|---|")
        out.append(f"| codec.encode (every add) | {t_encode:.3f} | x1.00 |")
        out.append(f"| drift count | {t_drift:.3f} | x{t_drift / t_encode:.3f} |")

        # 3. compaction
        queries = np.load(args.bundle / "queries.npy")[: args.queries]
        victims = [ids[i] for i in np.sort(rng.choice(len(ids), int(args.delete * len(ids)), replace=False))]
        s.delete(victims + foreign_ids)
        before_bytes = s.stats()["bytes_on_disk"]
        with Searcher(s) as searcher:
            before = [searcher.search(q, k=10) for q in queries]
        t = time.perf_counter()
        s.compact()
        t_compact = time.perf_counter() - t
        after_stats = s.stats()
        with Searcher(s) as searcher:
            after = [searcher.search(q, k=10) for q in queries]
        same_ids = sum([i for i, _ in a] == [i for i, _ in b] for a, b in zip(after, before))
        max_diff = max(abs(x - y) for a, b in zip(after, before) for (_, x), (_, y) in zip(a, b))
        assert s.verify().ok
        out.append(f"\ncompaction after deleting {len(victims)} of {len(ids)} documents and the foreign segment:\n")
        out.append("| | seconds | tokens/s | segments | live documents | bytes on disk |")
        out.append("|---|---|---|---|---|---|")
        live_tokens = after_stats["tokens"]
        second_tokens = sum(len(d) for d in docs[half:])
        out.append(f"| add of the second half (first add: {t_first:.1f} s, with training) | {t_second:.2f} | "
                   f"{second_tokens / t_second:,.0f} | | | |")
        out.append(f"| before compact | | | {stats['segments']} | {after_stats['documents']} | {before_bytes:,} |")
        out.append(f"| compact | {t_compact:.2f} | {live_tokens / t_compact:,.0f} | {after_stats['segments']} | "
                   f"{after_stats['documents']} | {after_stats['bytes_on_disk']:,} |")
        out.append(f"\nSearcher top-10 before vs after compaction: {same_ids}/{len(queries)} queries with the same ids "
                   f"in the same order; largest score difference {max_diff:.2e}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
