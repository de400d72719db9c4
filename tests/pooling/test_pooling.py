"""Token pooling itself (store/_pooling.py): row counts, unit norm, identity at 1, scipy's clusters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lodestore.store import check_pool_factor
from lodestore.store._ingest import InMemorySource
from lodestore.store._pooling import (PROTECTED_TOKENS, PooledSource, pool_batch, pool_document, pooled_lengths,
                                      ward_labels)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def partition(labels: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(labels == v).tolist()) for v in np.unique(labels)}


@pytest.mark.parametrize("n, factor, rows", [(1, 2, 1), (2, 2, 2), (3, 2, 2), (4, 2, 3), (10, 3, 4),
                                             (10, 1, 10), (5, 100, 2), (301, 4, 76)])
def test_a_document_keeps_its_first_row_and_ceil_of_the_rest(n, factor, rows):
    assert pooled_lengths([n], factor).tolist() == [rows]
    assert rows == (n if factor == 1 else min(n, PROTECTED_TOKENS) + math.ceil((n - PROTECTED_TOKENS) / factor))
    x = unit_rows(np.random.default_rng(n), n, 8)
    out = pool_document(x, factor)
    assert out.shape == (rows, 8) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], x[0])  # the protected token, as given


def test_factor_one_is_the_identity():
    x = unit_rows(np.random.default_rng(0), 12, 16)
    lens, out = pool_batch(np.array([5, 7]), x, 1)
    assert out is x and lens.tolist() == [5, 7]


@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.integers(1, 6), st.integers(2, 12),
       st.integers(0, 2**32 - 1))
def test_pooled_rows_are_unit_means_of_a_partition(doclens, factor, dim, seed):
    """Property: each document's rows are its protected row, then the unit means of a partition of the rest
    into exactly pooled_lengths - 1 clusters, Ward's (the same as pooling the document alone)."""
    rng = np.random.default_rng(seed)
    docs = [unit_rows(rng, n, dim) for n in doclens]
    lens, out = pool_batch(np.array(doclens), np.concatenate(docs), factor)
    assert lens.tolist() == pooled_lengths(doclens, factor).tolist() and len(out) == sum(lens)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    starts = np.concatenate([[0], np.cumsum(lens)])
    for doc, lo, hi in zip(docs, starts[:-1], starts[1:]):
        pooled = out[lo:hi]
        np.testing.assert_array_equal(pooled, pool_document(doc, factor))
        np.testing.assert_array_equal(pooled[0], doc[0])
        rest = doc[1:]
        if factor == 1 or not len(rest):
            np.testing.assert_array_equal(pooled, doc)
            continue
        labels = ward_labels(rest, len(pooled) - 1)
        assert sorted(set(labels.tolist())) == list(range(len(pooled) - 1))
        means = np.stack([rest[labels == c].mean(axis=0) for c in range(len(pooled) - 1)])
        np.testing.assert_allclose(pooled[1:], means / np.linalg.norm(means, axis=1, keepdims=True), atol=1e-5)


@given(st.integers(3, 40), st.data())
def test_clusters_are_scipys_ward_clusters(m, data):
    """On points in general position (no tied merge heights) the cut is scipy's own maxclust cut."""
    from scipy.cluster.hierarchy import fcluster, linkage

    k = data.draw(st.integers(1, m))
    x = unit_rows(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))), m, 16)
    reference = fcluster(linkage(x.astype(np.float64), method="ward"), t=k, criterion="maxclust")
    assert len(set(reference.tolist())) == k
    assert partition(ward_labels(x, k)) == partition(reference)


@given(arrays(np.float32, st.tuples(st.integers(2, 30), st.integers(1, 6)),
              elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0])), st.integers(2, 5))
def test_tied_and_repeated_rows_still_give_the_exact_count(x, factor):
    x = x.copy()
    x[:, 0] = np.where(np.abs(x).sum(axis=1) == 0, 1.0, x[:, 0])  # no zero rows: documents are unit rows
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = pool_document(x, factor)
    assert len(out) == pooled_lengths([len(x)], factor)[0]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_identical_rows_cluster_together():
    x = np.tile(unit_rows(np.random.default_rng(1), 3, 8), (4, 1))  # rows a b c a b c ...
    assert partition(ward_labels(x, 3)) == {frozenset(range(i, 12, 3)) for i in range(3)}
    assert ward_labels(x, 3).tolist() == [0, 1, 2] * 4  # numbered by first row


def test_a_vanishing_mean_keeps_the_clusters_first_row():
    v = unit_rows(np.random.default_rng(2), 2, 8)
    doc = np.stack([v[1], v[0], -v[0]])  # the two rows after the protected one cancel out
    out = pool_document(doc, 2)
    np.testing.assert_array_equal(out, doc[:2])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None, 1 << 21])
def test_bad_pool_factors_are_refused(bad):
    with pytest.raises(ValueError, match="pool_factor must be an integer"):
        check_pool_factor(bad)
    assert check_pool_factor(np.int64(3)) == 3


def test_pooled_source_sizes_batches_and_sample():
    rng = np.random.default_rng(3)
    docs = [unit_rows(rng, n, 8) for n in (1, 7, 20, 3, 12)]
    inner = InMemorySource([f"d{i}" for i in range(5)], docs, 8, None)
    src = PooledSource(inner, 3)
    assert src.n_docs == 5 and src.n_tokens == int(pooled_lengths([1, 7, 20, 3, 12], 3).sum()) == 1 + 3 + 8 + 2 + 5
    (ids, lens, tokens), = list(src.batches())
    assert ids == inner.ids() and lens.tolist() == src.doclens.tolist() and len(tokens) == src.n_tokens
    sample = src.sample(10, seed=5)
    assert sample.shape == (10, 8)
    rows = {r.tobytes() for r in tokens}
    assert all(r.tobytes() in rows for r in sample), "a sample draws rows of the pooled documents"
    assert len({r.tobytes() for r in src.sample(100, seed=5)}) == src.n_tokens  # all of them, each once
