"""lodestore.engine._maxsim against naive per-document numpy references: MaxSim, centroid interaction, top_k."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lodestore.engine._maxsim import centroid_interaction, maxsim_concat, maxsim_torch, top_k, top_k_set


def centroid_scores_concat(scores: np.ndarray, codes: np.ndarray, doclens: np.ndarray) -> np.ndarray:
    """Centroid interaction for a (q, K) score matrix and documents whose ids are concatenated in `codes`
    (the Searcher passes a centroid-major (K, q) table and each candidate's span in its id table)."""
    starts = np.concatenate([[0], np.cumsum(doclens)[:-1]]).astype(np.int64)
    return centroid_interaction(np.ascontiguousarray(scores.T), codes, starts, np.asarray(doclens, dtype=np.int64))


def naive_maxsim(query: np.ndarray, tokens: np.ndarray, doclens: np.ndarray) -> np.ndarray:
    """sum_i max_j <q_i, d_j> per document, one document at a time, in float64."""
    out, start = [], 0
    for n in doclens.tolist():
        doc = tokens[start : start + n].astype(np.float64)
        out.append((query.astype(np.float64) @ doc.T).max(axis=1).sum())
        start += n
    return np.array(out)


def naive_centroid_scores(scores: np.ndarray, codes: np.ndarray, doclens: np.ndarray) -> np.ndarray:
    """MaxSim with every token replaced by its centroid, given the (q, K) query-centroid scores."""
    out, start = [], 0
    for n in doclens.tolist():
        out.append(scores[:, codes[start : start + n].astype(np.int64)].astype(np.float64).max(axis=1).sum())
        start += n
    return np.array(out)


@st.composite
def maxsim_cases(draw):
    """(query (q, d), tokens (sum(doclens), d), doclens): random lengths, unit rows, seeded values."""
    doclens = np.array(draw(st.lists(st.integers(1, 30), min_size=1, max_size=25)), dtype=np.int64)
    q_len = draw(st.integers(1, 12))
    dim = draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    query = rng.standard_normal((q_len, dim)).astype(np.float32)
    tokens = rng.standard_normal((int(doclens.sum()), dim)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    return query, tokens, doclens


@given(maxsim_cases())
def test_maxsim_concat_matches_naive_reference(case):
    query, tokens, doclens = case
    got = maxsim_concat(query, tokens, doclens)
    assert got.shape == (len(doclens),)
    np.testing.assert_allclose(got, naive_maxsim(query, tokens, doclens), rtol=1e-5, atol=1e-4)


@given(maxsim_cases(), st.booleans())
def test_maxsim_concat_accepts_int32_doclens(case, int32):
    """The searcher passes int64 lengths; the corpus keeps int32 ones. Both give the same scores."""
    query, tokens, doclens = case
    lens = doclens.astype(np.int32) if int32 else doclens
    np.testing.assert_allclose(maxsim_concat(query, tokens, lens), naive_maxsim(query, tokens, doclens),
                               rtol=1e-5, atol=1e-4)


@given(
    doclens=st.lists(st.integers(1, 30), min_size=1, max_size=25),
    q_len=st.integers(1, 12),
    n_centroids=st.integers(1, 300),
    wide=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    chunk=st.sampled_from([1, 7, 40, 8192]),
)
def test_centroid_scores_concat_matches_naive_reference(doclens, q_len, n_centroids, wide, seed, chunk):
    """Also when the tokens are processed in slices of whole documents (chunk = slice size)."""
    import lodestore.engine._maxsim as maxsim_mod

    maxsim_mod.CI_CHUNK_TOKENS, saved = chunk, maxsim_mod.CI_CHUNK_TOKENS
    try:
        check_centroid_scores(doclens, q_len, n_centroids, wide, seed)
    finally:
        maxsim_mod.CI_CHUNK_TOKENS = saved


def check_centroid_scores(doclens, q_len, n_centroids, wide, seed):
    rng = np.random.default_rng(seed)
    doclens = np.array(doclens, dtype=np.int64)
    scores = rng.uniform(-1, 1, (q_len, n_centroids)).astype(np.float32)
    codes = rng.integers(0, n_centroids, int(doclens.sum())).astype(np.uint32 if wide else np.uint16)
    got = centroid_scores_concat(scores, codes, doclens)
    assert got.shape == (len(doclens),)
    np.testing.assert_allclose(got, naive_centroid_scores(scores, codes, doclens), rtol=1e-5, atol=1e-4)


def test_centroid_scores_equal_maxsim_of_the_centroids():
    """Centroid interaction is exactly MaxSim over the documents' tokens replaced by their centroids."""
    rng = np.random.default_rng(5)
    centroids = rng.standard_normal((40, 16)).astype(np.float32)
    query = rng.standard_normal((6, 16)).astype(np.float32)
    doclens = np.array([3, 1, 7, 2], dtype=np.int64)
    codes = rng.integers(0, 40, int(doclens.sum())).astype(np.uint16)
    via_scores = centroid_scores_concat(query @ centroids.T, codes, doclens)
    via_tokens = maxsim_concat(query, centroids[codes], doclens)
    np.testing.assert_allclose(via_scores, via_tokens, rtol=1e-6, atol=1e-5)


def test_no_documents_give_no_scores():
    q = np.ones((3, 4), np.float32)
    assert maxsim_concat(q, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)).shape == (0,)
    assert centroid_scores_concat(np.ones((3, 5), np.float32), np.zeros(0, np.uint16), np.zeros(0, np.int64)).shape == (0,)


def test_single_token_documents_score_sum_of_dot_products():
    q = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    tokens = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
    got = maxsim_concat(q, tokens, np.array([1, 1, 1]))
    np.testing.assert_allclose(got, [1 + 0 + 0.6, 0 + 1 + 0.8, -1 + 0 - 0.6], atol=1e-6)


# --------------------------------------------------------------------------- top_k


@given(
    values=st.lists(st.integers(0, 4), min_size=0, max_size=60),  # few distinct values: many ties
    k=st.integers(1, 70),
)
def test_top_k_set_is_top_k_in_index_order(values, k):
    """The cut's candidates (engine/_probe.py): the same k indices as top_k, ties at the k-th best to the
    lower indices, ascending."""
    scores = np.array(values, dtype=np.float32)
    np.testing.assert_array_equal(top_k_set(scores, k), np.sort(top_k(scores, k)))


@given(
    values=st.lists(st.integers(0, 4), min_size=0, max_size=60),  # few distinct values: many ties
    k=st.integers(1, 70),
)
def test_top_k_returns_the_best_scores_best_first(values, k):
    scores = np.array(values, dtype=np.float32)
    got = top_k(scores, k)
    assert got.dtype.kind == "i"
    assert len(got) == min(k, len(scores))
    assert len(set(got.tolist())) == len(got)
    # the k best values, best first
    np.testing.assert_array_equal(scores[got], np.sort(scores)[::-1][: len(got)])
    # equal scores inside the result come in index order
    for a, b in zip(got[:-1].tolist(), got[1:].tolist()):
        if scores[a] == scores[b]:
            assert a < b
    # deterministic: same input, same answer
    np.testing.assert_array_equal(top_k(scores.copy(), k), got)


def test_top_k_orders_ties_by_index_when_everything_is_returned():
    scores = np.array([0.5, 2.0, 0.5, 2.0, 1.0, 0.5], np.float32)
    np.testing.assert_array_equal(top_k(scores, 6), [1, 3, 4, 0, 2, 5])
    np.testing.assert_array_equal(top_k(scores, 100), [1, 3, 4, 0, 2, 5])


def test_top_k_distinct_scores():
    rng = np.random.default_rng(1)
    scores = rng.permutation(1000).astype(np.float32)
    np.testing.assert_array_equal(top_k(scores, 10), np.argsort(-scores)[:10])
    assert top_k(scores, 1).tolist() == [int(np.argmax(scores))]
    assert top_k(np.zeros(0, np.float32), 5).shape == (0,)


@pytest.mark.parametrize("scores, k, want", [
    ([0.0, 0.0, 1.0, 1.0], 1, [2]),
    ([1.0, 2.0, 2.0, 0.0, 0.0, 2.0, 2.0, 0.0], 3, [1, 2, 5]),
])
def test_top_k_breaks_ties_at_the_cut_by_index(scores, k, want):
    """The documented rule: among equal scores the lower index wins, also for the last places kept."""
    s = np.array(scores, dtype=np.float32)
    assert np.argsort(-s, kind="stable")[:k].tolist() == want  # the rule, spelled out
    assert top_k(s, k).tolist() == want


# --------------------------------------------------------------------------- torch


@given(maxsim_cases())
def test_maxsim_torch_equals_maxsim_concat_on_cpu(case):
    pytest.importorskip("torch")
    query, tokens, doclens = case
    got = maxsim_torch(query, tokens, doclens, "cpu")
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (len(doclens),)
    np.testing.assert_allclose(got, maxsim_concat(query, tokens, doclens), rtol=1e-5, atol=1e-5)


def test_maxsim_torch_with_int32_lengths_and_one_document():
    pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    q = rng.standard_normal((4, 8)).astype(np.float32)
    t = rng.standard_normal((9, 8)).astype(np.float32)
    for lens in (np.array([9], np.int32), np.array([2, 3, 4], np.int32)):
        np.testing.assert_allclose(maxsim_torch(q, t, lens, "cpu"), maxsim_concat(q, t, lens.astype(np.int64)),
                                   rtol=1e-5, atol=1e-5)
