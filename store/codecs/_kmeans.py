"""The centroids both codecs share: how many (PLAID's rule), on how big a sample, and spherical k-means.

A token's code is its nearest centroid whatever the codec (FORMAT.md section 7); the codecs
differ only in how they store the residual x - centroid.
"""

from __future__ import annotations

import math

import numpy as np

MIN_CENTROIDS = 256
MAX_CENTROIDS = 65536
# Training never looks at more than this many token vectors (bounds its memory:
# 2^18 x 128 dims x 4 bytes = 128 MiB) nor more than this many per centroid.
MAX_TRAINING_SAMPLE = 1 << 18
POINTS_PER_CENTROID = 16
KMEANS_ITERATIONS = 4  # ColBERT/PLAID's default; more bought no recall (docs/BENCHMARKS.md section 1, Build)
# At and above this K (None: never), k-means assigns with the cell-grouped products (store/codecs/_assign.py)
# instead of faiss's exact scan, which costs K x dim a point an iteration. Stores it trains search as well as
# faiss-trained ones at the same K (the same objective and recall, on two synthetic bundles and scifact) and
# train faster: docs/BENCHMARKS.md C20, "Cell k-means against faiss's" (tools/bench_kmeans.py).
CELL_KMEANS_MIN_K: int | None = 16384


def default_num_centroids(n_tokens: int) -> int:
    """K = 2^floor(log2(16 * sqrt(n_tokens))), clamped to [256, 65536] (PLAID's rule)."""
    k = 2 ** int(math.floor(math.log2(16 * math.sqrt(max(n_tokens, 1)))))
    return int(min(max(k, MIN_CENTROIDS), MAX_CENTROIDS))


def training_sample_size(n_tokens: int, num_centroids: int) -> int:
    """How many token vectors k-means sees: enough per centroid, bounded in memory."""
    return int(min(n_tokens, max(num_centroids * POINTS_PER_CENTROID, 1 << 14), MAX_TRAINING_SAMPLE))


def train_centroids(sample: np.ndarray, *, num_centroids: int | None = None, n_tokens: int | None = None,
                    seed: int = 0, iterations: int = KMEANS_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (K, dim) float16 of unit norm, held-out sample) from spherical k-means (faiss) on `sample`.

    `sample` is (n, dim) float32 of unit vectors; `n_tokens` (the corpus size) sets the
    default K. 95% of the sample trains k-means; the held-out 5% (at least one vector) is
    returned for the codec to fit its residual quantizer on. K never exceeds n.
    """
    import faiss  # local import: only a build needs it

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    n, dim = sample.shape
    k = num_centroids or default_num_centroids(n_tokens or n)
    if not 1 <= k <= MAX_CENTROIDS:
        raise ValueError(f"num_centroids must be in [1, {MAX_CENTROIDS}], got {k}")
    k = min(k, n)  # k-means cannot find more centroids than it has points
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_heldout = max(1, min(n // 20, 1 << 14))
    heldout = sample[order[:n_heldout]]
    train = sample[order[n_heldout:]] if n - n_heldout >= k else sample
    if CELL_KMEANS_MIN_K is not None and k >= CELL_KMEANS_MIN_K:
        centroids = cell_kmeans(train, k, seed=seed, iterations=iterations).astype(np.float16)
    else:
        km = faiss.Kmeans(
            dim, k, niter=iterations, seed=seed, spherical=True, verbose=False,
            max_points_per_centroid=max(POINTS_PER_CENTROID, len(train) // k + 1),
        )
        km.cp.min_points_per_centroid = 1
        km.train(train)
        centroids = km.centroids.astype(np.float16)
    norms = np.linalg.norm(centroids.astype(np.float32), axis=1, keepdims=True)
    return (centroids.astype(np.float32) / np.maximum(norms, 1e-12)).astype(np.float16), heldout


def cell_kmeans(x: np.ndarray, k: int, *, seed: int, iterations: int) -> np.ndarray:
    """Spherical k-means (Lloyd) of unit rows x into k float32 unit centroids, each iteration's
    assignment by store/codecs/_assign.py's CellAssigner over the current centroids.

    Starts from k distinct random rows (as faiss's k-means); a centroid no row chose is moved to
    a random row (faiss splits a large cluster instead: both only matter for empty clusters).
    Deterministic for a seed.
    """
    from scipy.sparse import csr_matrix  # a core dependency (pyproject.toml)

    from ._assign import CellAssigner

    rng = np.random.default_rng(seed)
    n = len(x)
    c = x[np.sort(rng.choice(n, size=k, replace=False))].astype(np.float32)
    rows = np.arange(n)
    ones = np.ones(n, dtype=np.float32)
    for it in range(iterations):
        ids = CellAssigner(c, seed=seed + it).assign(x)
        # each centroid's sum of its rows as one sparse (k, n) x (n, dim) product: no sorted copy of x
        sums = np.asarray(csr_matrix((ones, (ids, rows)), shape=(k, n)) @ x, dtype=np.float32)
        chosen = np.flatnonzero(np.bincount(ids, minlength=k))
        sums = sums[chosen]
        c[chosen] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        empty = np.setdiff1d(np.arange(k), chosen)
        if len(empty):
            c[empty] = x[rng.choice(n, size=len(empty), replace=False)]
    return c
