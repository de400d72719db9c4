"""Codec benchmark: what each residual codec keeps of the vectors, per byte, and what it costs.

    python -m tools.bench_codec BUNDLE [--queries 200] [--num-centroids K] [--codecs s1,s2,s4,pq16,pq32,pq64]
                                [--work DIR] [--e2e]

On one embedding bundle (tools/make_bundle.py or tools/encode_collection.py), every codec
gets the same centroids (one k-means, as Store trains it) and is judged on:

  B/tok     residual bytes per token (the centroid code, 2 B, comes on top for every codec)
  cosine    mean cosine between each input token and its decoded vector, over all tokens
  R@10 ceil recall@10 of exhaustive MaxSim over the decoded vectors against exhaustive
            MaxSim over the raw ones: the best any search over this codec can do
  build s   residual training + encoding every token (the shared k-means is printed apart)
  decode    ms to decode 1e5 tokens; +MaxSim: decode and score them against one query (BLAS)
  LUT       pq only: ms to score the same 1e5 tokens without decoding, by per-query tables
            T[s, code] = <q_s, codebook_s[code]> (the alternative FORMAT.md's issue asked to measure)
All timings on one BLAS thread (as the Searcher runs a query), median of 9 rounds that
time every codec once each (round-robin, so load swings on a shared machine hit all alike).

--e2e also builds two lodestore stores under --work (scalar 2-bit and pq with the default
subspaces, dim/4 bytes or fewer) and runs the Searcher on both, query by query in
alternation: recall@10 against the raw exhaustive truth, and p50 latency.

The raw truth is BUNDLE/truth_k100.npy when present (tools/ground_truth.py), else computed
here and cached under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

BLOCK = 1 << 16  # tokens per decode/score block
COST_TOKENS = 100_000
COST_ROUNDS = 9


def load_unit(bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    """All document tokens as unit float32 rows, and the doclens."""
    docs = np.load(bundle / "docs.npy", mmap_mode="r")
    x = np.empty(docs.shape, dtype=np.float32)
    for s in range(0, len(docs), BLOCK * 4):
        b = np.asarray(docs[s : s + BLOCK * 4], dtype=np.float32)
        x[s : s + len(b)] = b / np.linalg.norm(b, axis=1, keepdims=True)
    return x, np.load(bundle / "doclens.npy").astype(np.int64)


def maxsim_topk(blocks, doclens: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Exhaustive MaxSim top-k (n_queries, k) doc indices; `blocks(a, b)` gives unit rows [a, b)."""
    nq, ql, dim = queries.shape
    qflat = queries.reshape(nq * ql, dim)
    offsets = np.concatenate([[0], np.cumsum(doclens)])
    scores = np.empty((nq, len(doclens)), dtype=np.float32)
    start = 0
    while start < len(doclens):
        stop = min(max(start + 1, int(np.searchsorted(offsets, offsets[start] + BLOCK, side="right")) - 1), len(doclens))
        tokens = blocks(offsets[start], offsets[stop])
        sim = (qflat @ tokens.T).reshape(nq, ql, -1)
        scores[:, start:stop] = np.maximum.reduceat(sim, offsets[start:stop] - offsets[start], axis=2).sum(axis=1)
        start = stop
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def recall(found, truth, k: int = 10) -> float:
    return float(np.mean([len(set(list(f)[:k]) & set(list(t)[:k])) / k for f, t in zip(found, truth)]))


def raw_truth(bundle: Path, x: np.ndarray, doclens: np.ndarray, queries: np.ndarray, work: Path) -> np.ndarray:
    path = bundle / "truth_k100.npy"
    if path.exists():
        return np.load(path)[: len(queries), :10]
    cache = work / f"{bundle.name}.truth_q{len(queries)}_k10.npy"
    if cache.exists():
        return np.load(cache)
    t = time.perf_counter()
    top = maxsim_topk(lambda a, b: x[a:b], doclens, queries)
    work.mkdir(parents=True, exist_ok=True)
    np.save(cache, top)
    print(f"raw truth in {time.perf_counter() - t:.0f} s -> {cache}", file=sys.stderr)
    return top


def scalar_from_centroids(centroids, heldout: np.ndarray, nbits: int, coarse):
    """The scalar codec on given centroids: bucket cutoffs/weights from held-out residuals, as ResidualCodec.train."""
    from lodestore.store import ResidualCodec

    r = heldout - coarse.centroids[coarse.assign(heldout)]
    levels = 1 << nbits
    flat = r.ravel()
    cutoffs = np.quantile(flat, np.arange(1, levels) / levels).astype(np.float32)
    weights = np.quantile(flat, (np.arange(levels) + 0.5) / levels).astype(np.float32)
    codec = ResidualCodec(centroids, cutoffs, weights, nbits, float(np.abs(r).mean()))
    object.__setattr__(codec, "_assign_fn", coarse._assigner())
    return codec


def encode_all(codec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes = np.empty(len(x), dtype=np.uint16)
    rows = np.empty((len(x), codec.residual_bytes), dtype=np.uint8)
    for s in range(0, len(x), BLOCK * 2):
        codes[s : s + BLOCK * 2], rows[s : s + BLOCK * 2] = codec.encode(x[s : s + BLOCK * 2])
    return codes, rows


def median_ms(fn, reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def lut_scores(codec, q: np.ndarray, codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(q_len, n) token scores <q_i, c + r> without decoding: centroid gather + m table gathers.

    Unnormalized (the decoded vector's norm is not known without decoding it).
    """
    m, ksub, dsub = codec.codebooks.shape
    table = np.einsum("qmd,mkd->qmk", q.reshape(len(q), m, dsub), codec.codebooks)  # (q, m, 256)
    out = np.take(q @ codec.centroids.T, codes, axis=1)  # the search path has Q C^T already; counted here anyway
    for s in range(m):
        out += np.take(table[:, s], rows[:, s], axis=1)
    return out


def costs(codec, c, r, q: np.ndarray) -> dict:
    """One timing of each operation on these 1e5 tokens (ms)."""
    out = {"decode_ms": median_ms(lambda: codec.decode(c, r), 1),
           "score_ms": median_ms(lambda: q @ codec.decode(c, r).T, 1)}
    if hasattr(codec, "codebooks"):
        out["lut_ms"] = median_ms(lambda: lut_scores(codec, q, c, r), 1)
    return out


def parse_codecs(spec: str) -> list[tuple[str, int]]:
    out = []
    for name in spec.split(","):
        out.append(("pq", int(name[2:])) if name.startswith("pq") else ("scalar", int(name.lstrip("s"))))
    return out


def codec_table(args, x, doclens, queries, truth) -> list[dict]:
    from threadpoolctl import threadpool_limits

    from lodestore.store import ResidualCodec, default_num_centroids
    from lodestore.store.codecs import training_sample_size
    from lodestore.store.codecs.pq import PQ_TRAINING_SAMPLE, PQCodec

    n = len(x)
    k = args.num_centroids or default_num_centroids(n)
    rng = np.random.default_rng(args.seed)
    sample = x[np.sort(rng.choice(n, training_sample_size(n, k), replace=False))]
    heldout = x[np.sort(rng.choice(n, min(n, 1 << 14), replace=False))]
    residual_sample = x[np.sort(rng.choice(n, min(n, PQ_TRAINING_SAMPLE), replace=False))]
    t = time.perf_counter()
    coarse = ResidualCodec.train(sample, 1, num_centroids=k, n_tokens=n, seed=args.seed)
    kmeans_s = time.perf_counter() - t
    coarse._assigner()
    print(f"k-means: K={coarse.num_centroids} on {len(sample):,} tokens in {kmeans_s:.1f} s", file=sys.stderr)
    rows_out, timed = [], []
    for kind, p in parse_codecs(args.codecs):
        t = time.perf_counter()
        if kind == "pq":
            codec = PQCodec.train_codebooks(coarse.centroids_f16, residual_sample, p, seed=args.seed)
            object.__setattr__(codec, "_assign_fn", coarse._assigner())
        else:
            codec = scalar_from_centroids(coarse.centroids_f16, heldout, p, coarse)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        codes, rows = encode_all(codec, x)
        encode_s = time.perf_counter() - t
        cos_sum = 0.0

        def blocks(a, b):
            nonlocal cos_sum
            y = codec.decode(codes[a:b], rows[a:b])
            cos_sum += float(np.einsum("ij,ij->", y, x[a:b], dtype=np.float64))
            return y

        top = maxsim_topk(blocks, doclens, queries)
        name = f"PQ {p} x 256" if kind == "pq" else f"{p}-bit scalar"
        row = {"codec": name, "bytes": codec.residual_bytes, "cosine": cos_sum / n, "recall": recall(top, truth),
               "train_s": train_s, "encode_s": encode_s}
        print(json.dumps(row), file=sys.stderr)
        rows_out.append(row)
        timed.append((row, codec, codes[:COST_TOKENS].copy(), rows[:COST_TOKENS].copy()))
        del codes, rows
    # costs last, round-robin over the codecs (one repetition of each per round), so that
    # the shared machine's load swings hit every codec alike
    samples: dict[int, dict[str, list[float]]] = {i: {} for i in range(len(timed))}
    with threadpool_limits(1, "blas"):
        for _ in range(COST_ROUNDS):
            for i, (_row, codec, c, r) in enumerate(timed):
                for key, ms in costs(codec, c, r, queries[0]).items():
                    samples[i].setdefault(key, []).append(ms)
    for i, (row, *_rest) in enumerate(timed):
        row.update({key: float(np.median(v)) for key, v in samples[i].items()})
    rows_out.sort(key=lambda r: (r["bytes"], r["codec"]))
    return rows_out, kmeans_s, coarse.num_centroids


def e2e(args, bundle: Path, queries_raw: np.ndarray, truth: np.ndarray) -> list[dict]:
    """Build a scalar-2-bit and a pq store from the bundle; Searcher recall@10 and p50, queries alternating."""
    import warnings

    import lodestore

    ids = (bundle / "ids.txt").read_text().splitlines()
    index_of = {d: i for i, d in enumerate(ids)}
    dim = queries_raw.shape[2]
    configs = {"scalar 2-bit": {"nbits": 2}, "pq default": {"codec": "pq"}}
    searchers, built = {}, {}
    for name, kw in configs.items():
        path = args.work / f"{bundle.name}.{name.replace(' ', '_')}"
        if not (path / "manifest.json").exists():
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with lodestore.Store.create(path, dim=dim, num_centroids=args.num_centroids, seed=args.seed, **kw) as s:
                    s.add_embeddings(bundle, progress=False)
            built[name] = time.perf_counter() - t
        searchers[name] = lodestore.Searcher(path)
    for s in searchers.values():
        for q in queries_raw[:5]:
            s.search(q, k=10)
    times = {n: [] for n in searchers}
    found = {n: [] for n in searchers}
    for i, q in enumerate(queries_raw):
        order = list(searchers) if i % 2 == 0 else list(reversed(searchers))
        for name in order:
            t = time.perf_counter()
            hits = searchers[name].search(q, k=10)
            times[name].append(time.perf_counter() - t)
            found[name].append([index_of[h[0]] for h in hits])
    rows = []
    for name, s in searchers.items():
        st = s.store.stats()
        rows.append({"store": name, "codec": st["codec"], "residual_bytes": st["residual_bytes_per_token"],
                     "bytes_per_token": st["bytes_per_token"], "build_s": built.get(name),
                     "recall": recall(found[name], truth), "p50_ms": float(np.percentile(times[name], 50) * 1e3),
                     "p95_ms": float(np.percentile(times[name], 95) * 1e3)})
        s.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_codec", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--num-centroids", type=int, default=None, help="K (default: the store's rule for the bundle size)")
    p.add_argument("--codecs", default="s1,pq16,s2,pq32,s4,pq64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_codec"), help="truth cache and --e2e stores")
    p.add_argument("--e2e", action="store_true", help="also build scalar-2-bit and pq stores and compare Searchers")
    p.add_argument("--no-table", action="store_true", help="only the --e2e comparison")
    args = p.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(1)  # the shared 2-core box: OpenMP spin-waits cost more than a second thread buys
    t0 = time.perf_counter()
    x, doclens = load_unit(args.bundle)
    queries_raw = np.load(args.bundle / "queries.npy")[: args.queries].astype(np.float32)
    norms = np.linalg.norm(queries_raw, axis=2, keepdims=True)
    queries = queries_raw / np.where(norms == 0, 1.0, norms)  # zero (padding) tokens stay zero, as the engine keeps them
    truth = raw_truth(args.bundle, x, doclens, queries, args.work)
    print(f"bundle {args.bundle}: {len(x):,} tokens, {len(doclens):,} docs, dim {x.shape[1]}, "
          f"{len(queries)} queries; load avg {os.getloadavg()[0]:.1f}")
    if not args.no_table:
        rows, kmeans_s, k = codec_table(args, x, doclens, queries, truth)
        print(f"shared k-means (K={k}): {kmeans_s:.1f} s; costs per 1e5 tokens, one BLAS thread, one {queries.shape[1]}-token query")
        head = ("residual codec", "B/token (residual)", "token cosine", "recall@10 ceiling", "build s (train + encode)",
                "decode ms/1e5", "decode+MaxSim ms/1e5", "LUT score ms/1e5")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print(f"| {r['codec']} | {r['bytes']} | {r['cosine']:.4f} | {r['recall']:.3f} | "
                  f"{r['train_s'] + r['encode_s']:.1f} ({r['train_s']:.1f} + {r['encode_s']:.1f}) | {r['decode_ms']:.1f} | "
                  f"{r['score_ms']:.1f} | {r['lut_ms']:.1f} |" if "lut_ms" in r else
                  f"| {r['codec']} | {r['bytes']} | {r['cosine']:.4f} | {r['recall']:.3f} | "
                  f"{r['train_s'] + r['encode_s']:.1f} ({r['train_s']:.1f} + {r['encode_s']:.1f}) | {r['decode_ms']:.1f} | "
                  f"{r['score_ms']:.1f} | - |")
    if args.e2e:
        del x
        rows = e2e(args, args.bundle, queries_raw, truth)
        print("\nend to end: lodestore Searcher (default nprobe/ndocs/budget), recall@10 against raw exhaustive MaxSim")
        head = ("store", "residual B/token", "B/token on disk", "build s", "recall@10", "p50 ms", "p95 ms")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            build = f"{r['build_s']:.0f}" if r["build_s"] else "(reused)"
            print(f"| {r['store']} ({r['codec']}) | {r['residual_bytes']} | {r['bytes_per_token']:.1f} | {build} | "
                  f"{r['recall']:.3f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |")
        base = rows[0]
        for r in rows[1:]:
            print(f"{r['store']} vs {base['store']}: recall {r['recall'] - base['recall']:+.3f}, "
                  f"p50 x{r['p50_ms'] / base['p50_ms']:.2f}")
    print(f"total {time.perf_counter() - t0:.0f} s; load avg {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
