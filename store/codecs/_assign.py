"""Nearest centroid of many tokens among many centroids: an inverted-file search run as matrix products.

Assigning each token its nearest centroid (maximum inner product) is most of a build's time at
large K: the exact scan costs K x dim multiply-adds a token, and faiss's IVF scans its probed
lists one token at a time. `CellAssigner` does the IVF's work grouped so every step is one BLAS
product:

1. The K centroids are clustered into `cells` coarse cells (spherical k-means over the centroids,
   seeded); each centroid belongs to its nearest cell, and the table holds them cell by cell.
2. A batch of tokens is scored against the coarse centroids (one product); each token probes
   its `probe` best cells. The (token, cell) pairs are grouped by cell, and the tokens probing a
   cell are scored against that cell's centroids at once (one product per cell, a contiguous
   slice of the table); each token keeps the best centroid over its probes.

A token whose nearest centroid lies in a cell it did not probe gets the best one of those it
did: a slightly larger residual, which the residual code then carries (the stored vector is
still centroid + encoded residual). docs/BENCHMARKS.md section C20 measures the share of tokens
given the exact nearest centroid, the score lost where not, and the time against the exact
scan and faiss's IVF.
"""

from __future__ import annotations

import math

import numpy as np

BATCH = 1 << 15  # tokens scored against the coarse centroids at once (a BATCH x cells float32 block)


def default_cells(k: int) -> int:
    """About 2 sqrt(K) cells, a power of two (the faiss IVF over the centroids that builds used before)."""
    return int(2 ** round(math.log2(math.sqrt(max(k, 1))) + 1))


def default_probe(cells: int) -> int:
    """A sixteenth of the cells, at least 8 (as that IVF's nprobe: the same share of exact nearest centroids)."""
    return max(8, cells // 16)


class CellAssigner:
    """Nearest centroid (max inner product) of token rows, one BLAS product per coarse cell.

    `centroids` (K, dim) float32. Deterministic for a given `seed`. Memory: the centroids
    reordered by cell (a second K x dim float32 copy) and a few ints per centroid.
    """

    def __init__(self, centroids: np.ndarray, *, cells: int | None = None, probe: int | None = None,
                 seed: int = 1234):
        import faiss  # local import: only a build assigns

        c = np.ascontiguousarray(centroids, dtype=np.float32)
        k, dim = c.shape
        cells = max(1, min(cells or default_cells(k), k))
        km = faiss.Kmeans(dim, cells, niter=10, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=max(256, k // cells + 1))
        km.cp.min_points_per_centroid = 1
        km.train(c)
        self.coarse = np.ascontiguousarray(km.centroids, dtype=np.float32)  # (cells, dim)
        cell_of = np.argmax(c @ self.coarse.T, axis=1)
        order = np.argsort(cell_of, kind="stable")
        self.ids = order.astype(np.int64)  # row of the table -> centroid id
        self.table = np.ascontiguousarray(c[order])  # the centroids, cell by cell
        self.starts = np.searchsorted(cell_of[order], np.arange(cells + 1)).astype(np.int64)
        probe = default_probe(cells) if probe is None else probe
        self.k, self.dim, self.cells, self.probe = k, dim, cells, max(1, min(probe, cells))

    def assign(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(n, dim) float32 rows -> (n,) int64 centroid ids (into `out` when given)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty(len(x), dtype=np.int64) if out is None else out
        for a in range(0, len(x), BATCH):
            out[a : a + BATCH] = self._assign_batch(x[a : a + BATCH])
        return out

    def _assign_batch(self, part: np.ndarray) -> np.ndarray:
        n, p = len(part), self.probe
        coarse = part @ self.coarse.T
        probes = np.argpartition(-coarse, p - 1, axis=1)[:, :p] if p < self.cells else \
            np.broadcast_to(np.arange(self.cells), (n, self.cells))
        pair_cell = probes.ravel()
        order = np.argsort(pair_cell, kind="stable")  # pairs grouped by cell
        bounds = np.searchsorted(pair_cell[order], np.arange(self.cells + 1))
        best = np.full(n * p, -np.inf, dtype=np.float32)  # per (token, probe) pair
        arg = np.zeros(n * p, dtype=np.int64)
        for c in np.flatnonzero(np.diff(bounds)).tolist():
            lo, hi = self.starts[c], self.starts[c + 1]
            if lo == hi:
                continue  # a cell no centroid is nearest to
            pairs = order[bounds[c] : bounds[c + 1]]
            scores = part[pairs // p] @ self.table[lo:hi].T
            j = np.argmax(scores, axis=1)
            best[pairs] = scores[np.arange(len(pairs)), j]
            arg[pairs] = lo + j
        pick = np.argmax(best.reshape(n, p), axis=1)
        return self.ids[arg.reshape(n, p)[np.arange(n), pick]]
