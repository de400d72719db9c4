"""Token pooling: fewer stored vectors per document, by clustering its tokens (FORMAT.md 7.7).

A store created with ``pool_factor`` f > 1 keeps each document's first row as
given (the protected token: the [CLS] position of lodestore's text encoder,
the one PyLate protects) and replaces its other m rows by ceil(m / f) cluster
means, each re-normalized to unit length. The clusters are Ward's hierarchical
clustering of those rows (scipy.cluster.hierarchy.linkage, the method of
PyLate and of Clavié, Chaffin & Adams 2024), cut where exactly that many
clusters remain, i.e. after the first m - ceil(m/f) merges; an exact count
lets a segment be sized before its rows are pooled. Queries are never pooled,
and f = 1 is the identity.

scipy is imported only when something is pooled. `PooledSource` wraps any
DocSource, so the codec is trained on, and the segment written from, the
pooled rows: what the store holds.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ._ingest import DocSource, InMemorySource

#: Rows at the head of every document kept as they are (PyLate's protected_tokens=1).
PROTECTED_TOKENS = 1
#: Largest pool factor a manifest may record (FORMAT.md 5.1): any larger keeps one cluster anyway.
MAX_POOL_FACTOR = 1 << 20
#: A cluster mean shorter than this (opposite vectors averaged) is replaced by its first member row.
MIN_MEAN_NORM = 1e-6


def check_pool_factor(value: Any) -> int:
    """A pool factor as an int >= 1 (1: no pooling); ValueError for anything else, bools included."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_POOL_FACTOR:
        raise ValueError(f"pool_factor must be an integer from 1 (no pooling) to {MAX_POOL_FACTOR}, got {value!r}")
    return int(value)


def pooled_lengths(doclens: Any, factor: int) -> np.ndarray:
    """Rows each document keeps at `factor`: its protected rows plus ceil(rest / factor)."""
    doclens = np.asarray(doclens, dtype=np.int64)
    if factor == 1:
        return doclens.copy()
    rest = np.maximum(doclens - PROTECTED_TOKENS, 0)
    return np.minimum(doclens, PROTECTED_TOKENS) + -(-rest // factor)


def ward_labels(x: np.ndarray, k: int) -> np.ndarray:
    """Cluster of each row of `x` (m, d) when Ward's clustering is cut at exactly k clusters.

    Labels are 0..k-1, numbered in order of each cluster's first row. The distances are
    Euclidean, from one float64 Gram matrix (BLAS) instead of scipy's pairwise loop; the
    tree is scipy's (nearest-neighbour chain); the cut applies its first m - k merges,
    so ties in merge height never change the number of clusters (fcluster's
    "maxclust" may give fewer).
    """
    m = len(x)
    if k >= m:
        return np.arange(m, dtype=np.int64)
    if k <= 1:
        return np.zeros(m, dtype=np.int64)
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    xd = np.asarray(x, dtype=np.float64)
    gram = xd @ xd.T
    sq = np.diag(gram).copy()
    d2 = sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    z = linkage(squareform(np.sqrt(d2), checks=False), method="ward")
    merges = m - k
    parent = np.arange(2 * m - 1, dtype=np.int64)
    children = z[:merges, :2].astype(np.int64)
    parent[children[:, 0]] = parent[children[:, 1]] = m + np.arange(merges)
    while True:  # pointer jumping: every node to the root of its subtree, in log2(m) rounds
        up = parent[parent]
        if np.array_equal(up, parent):
            break
        parent = up
    _, first, inverse = np.unique(parent[:m], return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def pool_batch(doclens: np.ndarray, tokens: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Pool a batch of documents (CSR: `doclens`, unit float32 `tokens`): (new doclens, new tokens).

    Rows of document i come out as: its protected row(s), then its clusters' unit-norm
    means in the order of their first rows. factor 1 returns the input unchanged.
    """
    doclens = np.asarray(doclens, dtype=np.int64)
    if factor == 1:
        return doclens, tokens
    out_lens = pooled_lengths(doclens, factor)
    starts = np.concatenate([[0], np.cumsum(doclens)])
    out_starts = np.concatenate([[0], np.cumsum(out_lens)])
    group = np.empty(len(tokens), dtype=np.int64)  # output row of each input row
    with _one_blas_thread():
        for i, n in enumerate(doclens.tolist()):
            lo, o = int(starts[i]), int(out_starts[i])
            p = min(n, PROTECTED_TOKENS)
            group[lo : lo + p] = o + np.arange(p)
            if n > p:
                group[lo + p : lo + n] = o + p + ward_labels(tokens[lo + p : lo + n], int(out_lens[i]) - p)
    from scipy.sparse import csr_matrix

    n_out = int(out_starts[-1])
    members = csr_matrix((np.ones(len(group), np.float32), (group, np.arange(len(group)))), shape=(n_out, len(group)))
    sums = np.asarray(members @ tokens, dtype=np.float32)  # one sparse product: every group's sum at once
    counts = np.bincount(group, minlength=n_out)
    first = np.unique(group, return_index=True)[1]  # each group's first input row (no group is empty)
    norms = np.linalg.norm(sums, axis=1)
    small = norms < MIN_MEAN_NORM * counts  # the mean is nearly zero: its rows cancel out
    norms[small] = 1.0
    pooled = sums / norms[:, None]
    keep = (counts == 1) | small  # one member (protected rows, lone tokens) or a vanishing mean: a row as given
    pooled[keep] = tokens[first[keep]]
    return out_lens, pooled


def _one_blas_thread():
    """One BLAS thread for the many small per-document products: on a busy machine thread
    hand-offs cost more than they buy (the Searcher limits its query products the same way)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


_CONTROLLER = None


def pool_document(x: np.ndarray, factor: int) -> np.ndarray:
    """One document's (n, d) unit rows pooled at `factor` (see pool_batch)."""
    return pool_batch(np.array([len(x)]), x, factor)[1]


class PooledSource(DocSource):
    """A DocSource whose documents come out pooled: what a store with pool_factor > 1 encodes.

    Its sizes are known before anything is pooled (pooled_lengths); batches pool the
    wrapped source's batches; sample() draws rows of the pooled documents, pooling
    only the documents that hold a drawn row.
    """

    def __init__(self, source: DocSource, factor: int):
        self.source, self.factor = source, check_pool_factor(factor)
        self.dim, self.n_docs, self.payloads = source.dim, source.n_docs, source.payloads
        self.metadata, self.metadata_schema = source.metadata, source.metadata_schema  # per document: unpooled
        self.keywords = source.keywords
        self.input_doclens = _doclens(source)
        self.doclens = pooled_lengths(self.input_doclens, self.factor)
        self.n_tokens = int(self.doclens.sum())

    def ids(self) -> list[str]:
        return self.source.ids()

    def batches(self) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        for ids, doclens, tokens in self.source.batches():
            lens, pooled = pool_batch(doclens, tokens, self.factor)
            yield ids, lens, pooled

    def sample(self, n: int, seed: int) -> np.ndarray:
        rows = np.sort(np.random.default_rng(seed).choice(self.n_tokens, size=min(n, self.n_tokens), replace=False))
        offsets = np.concatenate([[0], np.cumsum(self.doclens)])
        wanted = np.zeros(self.n_docs, dtype=bool)
        wanted[np.searchsorted(offsets, rows, side="right") - 1] = True
        parts, first_doc = [], 0
        for ids, doclens, tokens in self.source.batches():
            last_doc = first_doc + len(ids)
            picked = np.flatnonzero(wanted[first_doc:last_doc])
            if len(picked):
                starts = np.concatenate([[0], np.cumsum(doclens)])
                sub = np.concatenate([tokens[starts[d] : starts[d + 1]] for d in picked.tolist()])
                _, pooled = pool_batch(doclens[picked], sub, self.factor)
                # pooled rows of the picked documents, in store order: map the drawn rows into them
                doc_rows = [np.arange(offsets[first_doc + d], offsets[first_doc + d + 1]) for d in picked.tolist()]
                global_rows = np.concatenate(doc_rows)
                lo, hi = np.searchsorted(rows, [offsets[first_doc], offsets[last_doc]])
                parts.append(pooled[np.searchsorted(global_rows, rows[lo:hi])])
            first_doc = last_doc
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


def _doclens(source: DocSource) -> np.ndarray:
    """Tokens per document of `source`: its doclens, its in-memory documents, or one pass counting them."""
    lens = getattr(source, "doclens", None)
    if lens is not None:
        return np.asarray(lens, dtype=np.int64)
    if isinstance(source, InMemorySource):
        return np.array([len(d) for d in source.docs], dtype=np.int64)
    return np.concatenate([np.asarray(d, dtype=np.int64) for _, d, _ in source.batches()])


def check_requested_factor(requested: int | None, stored: int, root: Any) -> None:
    """A pool factor asked of an add (None: not asked) must be the store's own (ValueError)."""
    if requested is None:
        return
    requested = check_pool_factor(requested)
    if requested != stored:
        raise ValueError(f"{root}: this store pools documents with pool_factor={stored} (set when it was "
                         f"created), not {requested}; a store keeps one pool factor for all its documents: "
                         "build a new store to change it (nothing was added)")


def pooled(source: DocSource, factor: int, root: Any) -> DocSource:
    """`source` as a store pooling at `factor` encodes it (a PooledSource must already pool at `factor`)."""
    if isinstance(source, PooledSource):
        check_requested_factor(source.factor, factor, root)
        return source
    return PooledSource(source, factor) if factor > 1 else source
