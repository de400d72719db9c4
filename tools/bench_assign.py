"""Nearest-centroid assignment at build time: exact scan vs faiss IVF vs the cell-grouped products.

    python -m tools.bench_assign STORE DATA [--tokens 20000] [--probes default,16,32]

STORE: a store whose codec's centroids are used (its K). DATA: a bundle directory (docs.npy) or a
synthetic store directory (corpus.json, tools/synthetic_store.py): `--tokens` rows are drawn from it.
One table: microseconds a token (wall, this process's threads), the share of tokens given their
exact nearest centroid, the mean and 99th-percentile inner-product score lost where it is not,
and the time against the exact scan measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _tokens(data: Path, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if (data / "corpus.json").exists():
        from lodestore.store.testing.streamed import SyntheticCorpus

        corpus = SyntheticCorpus.from_json((data / "corpus.json").read_text())
        rows = np.sort(rng.choice(corpus.total_tokens, size=n, replace=False))
        x = corpus.rows(rows)
    else:
        docs = np.load(data / "docs.npy", mmap_mode="r")
        rows = np.sort(rng.choice(len(docs), size=min(n, len(docs)), replace=False))
        x = np.asarray(docs[rows], dtype=np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(x, dtype=np.float32)


def _faiss_ivf(centroids: np.ndarray):
    """The assignment index builds used before the cell-grouped products: faiss IVFFlat over the
    centroids, ~2 sqrt(K) lists, nprobe = max(8, lists / 16)."""
    import math

    import faiss

    k, dim = centroids.shape
    nlist = int(2 ** round(math.log2(math.sqrt(k)) + 1))
    idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    idx.cp.seed, idx.cp.niter, idx.cp.min_points_per_centroid = 1234, 10, 1
    idx.train(centroids)
    idx.nprobe = max(8, nlist // 16)
    idx.add(centroids)
    return idx


def _timed(fn, x: np.ndarray) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    ids = np.asarray(fn(x)).reshape(-1)
    return ids, (time.perf_counter() - t) / len(x) * 1e6


def run(args: argparse.Namespace) -> list[dict]:
    import faiss

    import lodestore
    from lodestore.store.codecs._assign import CellAssigner

    with lodestore.Store.open(args.store) as store:
        centroids = np.ascontiguousarray(store.codec.centroids, dtype=np.float32)
    x = _tokens(Path(args.data), args.tokens, args.seed)
    flat = faiss.IndexFlatIP(centroids.shape[1])
    flat.add(centroids)
    exact, t_exact = _timed(lambda v: flat.search(v, 1)[1], x)
    best = np.einsum("ij,ij->i", x, centroids[exact])

    def row(name: str, ids: np.ndarray, us: float, setup_s: float = 0.0) -> dict:
        lost = best - np.einsum("ij,ij->i", x, centroids[ids])
        miss = ids != exact
        return {"method": name, "us_per_token": us, "vs_exact": us / t_exact, "exact_share": float(1 - miss.mean()),
                "mean_loss": float(lost.mean()), "p99_loss": float(np.quantile(lost, 0.99)), "setup_s": setup_s}

    rows = [row("exact (faiss flat)", exact, t_exact)]
    t = time.perf_counter()
    ivf = _faiss_ivf(centroids)
    setup = time.perf_counter() - t
    ids, us = _timed(lambda v: ivf.search(v, 1)[1], x)
    rows.append(row(f"faiss IVF (nlist {ivf.nlist}, nprobe {ivf.nprobe})", ids, us, setup))
    for probe in args.probes.split(","):
        t = time.perf_counter()
        a = CellAssigner(centroids, probe=None if probe == "default" else int(probe))
        setup = time.perf_counter() - t
        ids, us = _timed(a.assign, x)
        rows.append(row(f"cells {a.cells}, probe {a.probe}" + (" (default)" if probe == "default" else ""),
                        ids, us, setup))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("data")
    p.add_argument("--tokens", type=int, default=20000)
    p.add_argument("--probes", default="default", help="cells a token probes, comma-separated; default: the build's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = run(args)
    if args.json:
        print(json.dumps(rows))
        return 0
    print("| method | us/token | vs exact | exact nearest | mean score lost | p99 score lost | setup s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['us_per_token']:.1f} | x{r['vs_exact']:.3f} | {r['exact_share']:.4f} | "
              f"{r['mean_loss']:.5f} | {r['p99_loss']:.4f} | {r['setup_s']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
