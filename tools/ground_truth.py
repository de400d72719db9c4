"""Exact ground truth over an embedding bundle's uncompressed vectors, cached beside it.

    python -m tools.ground_truth BUNDLE [-k 100]

Exhaustive MaxSim of every query in queries.npy against every document of
docs.npy, streamed block by block (faiss contrib's knn_ground_truth habit), so
memory stays bounded for any corpus size. Writes BUNDLE/truth_k{K}.npy: (n_queries, K)
int64 document indices, best first. Benchmarks compare against it to separate
compression loss from search loss.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

BLOCK_TOKENS = 1 << 14  # x (queries x q_len) float32 scores per block: ~420 MB for 200 x 32 queries


def exact_topk(bundle: Path, k: int = 100, progress: bool = True) -> np.ndarray:
    """(n_queries, k) indices of the exact MaxSim top-k documents over the raw bundle vectors."""
    docs = np.load(bundle / "docs.npy", mmap_mode="r")
    doclens = np.load(bundle / "doclens.npy").astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(doclens)])

    def pieces():
        start = 0
        while start < len(doclens):
            stop = min(max(start + 1, int(np.searchsorted(offsets, offsets[start] + BLOCK_TOKENS, side="right")) - 1),
                       len(doclens))
            yield start, doclens[start:stop], np.asarray(docs[offsets[start] : offsets[stop]], dtype=np.float32)
            start = stop

    return exact_topk_stream(np.load(bundle / "queries.npy"), pieces(), len(doclens), len(docs), k, progress)


def exact_topk_stream(queries: np.ndarray, pieces, n_docs: int, n_tokens: int, k: int = 100,
                      progress: bool = True) -> np.ndarray:
    """(n_queries, k) exact MaxSim top-k document numbers over documents streamed as pieces of
    (first document, doclens, token rows): every score kept (n_queries x n_docs float32), nothing else."""
    return range_topk(queries, pieces, 0, n_docs, n_tokens, k, progress=progress)[0]


def range_topk(queries: np.ndarray, pieces, first_doc: int, n_docs: int, n_tokens: int, k: int, *,
               normalize: bool = True, progress: bool = True, desc: str = "exact MaxSim"
               ) -> tuple[np.ndarray, np.ndarray]:
    """(documents, scores), each (n_queries, min(k, n_docs)), best first: exact MaxSim top-k over
    documents first_doc ... first_doc + n_docs, streamed as pieces of (first document, doclens, rows).
    normalize: scale the rows to unit norm (raw vectors; a store's decoded rows already are)."""
    from tqdm import tqdm

    queries = np.asarray(queries, dtype=np.float32)
    norms = np.linalg.norm(queries, axis=2, keepdims=True)
    queries = queries / np.where(norms == 0, 1.0, norms)  # zero (padding) tokens stay zero, as the engine keeps them
    nq, ql, dim = queries.shape
    qflat = queries.reshape(nq * ql, dim)
    scores = np.empty((nq, n_docs), dtype=np.float32)
    bar = tqdm(total=n_tokens, unit="tok", unit_scale=True, desc=desc, disable=not progress)
    for first, lens, rows in pieces:
        first -= first_doc
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        for a in range(0, len(lens), max(1, BLOCK_TOKENS // 80)):  # ~BLOCK_TOKENS tokens a product
            b = min(len(lens), a + max(1, BLOCK_TOKENS // 80))
            block = rows[starts[a] : starts[b - 1] + lens[b - 1]]
            if normalize:
                block = block / np.linalg.norm(block, axis=1, keepdims=True)
            sim = (qflat @ block.T).reshape(nq, ql, -1)  # (nq, ql, tokens)
            scores[:, first + a : first + b] = np.maximum.reduceat(sim, starts[a:b] - starts[a], axis=2).sum(axis=1)
            bar.update(len(block))
    bar.close()
    k = min(k, n_docs)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    return top + first_doc, np.take_along_axis(scores, top, axis=1)


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k of the union of disjoint ranges' top-k lists (documents, scores), best first: the
    top-k over all the ranges, since a document in the whole top-k is in its own range's top-k."""
    docs = np.concatenate([d for d, _ in parts], axis=1)
    scores = np.concatenate([s for _, s in parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(docs, order, axis=1), np.take_along_axis(scores, order, axis=1)


def cached_range(path: Path, compute) -> tuple[np.ndarray, np.ndarray]:
    """A range's (documents, scores) from `path`, or computed and saved there (atomically), so a ground
    truth over a corpus too big for one session is computed range by range and resumed after a stop."""
    if path.exists():
        with np.load(path) as z:
            return z["docs"], z["scores"]
    docs, scores = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, docs=docs, scores=scores)
    os.replace(tmp, path)
    return docs, scores


def queries_key(queries: np.ndarray) -> str:
    """A short hash of the queries' bytes: names cached ranges, so other queries never reuse them."""
    return hashlib.sha1(np.ascontiguousarray(queries).tobytes()).hexdigest()[:12]


def load_or_compute(bundle: Path, k: int = 100) -> np.ndarray:
    path = bundle / f"truth_k{k}.npy"
    if path.exists():
        return np.load(path)
    t = time.perf_counter()
    top = exact_topk(bundle, k)
    np.save(path, top)
    print(f"ground truth for {len(top)} queries in {time.perf_counter() - t:.0f} s -> {path}", file=sys.stderr)
    return top


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.ground_truth", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("-k", type=int, default=100)
    args = p.parse_args(argv)
    load_or_compute(args.bundle, args.k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
