"""Bad queries, bad k, bad budgets, and a corrupted store met during a search."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lodestore
from lodestore.engine import parse_size

DIM = 128


@pytest.fixture(scope="module")
def searcher(engine_store):
    s = lodestore.Searcher(engine_store, memory_budget="all")
    yield s
    s.close()


@pytest.fixture(scope="module")
def good(engine_queries) -> np.ndarray:
    return engine_queries[0]


# --------------------------------------------------------------------------- queries


@pytest.mark.parametrize("query, pattern", [
    (np.ones((4, 64), np.float32), r"expected \(q_len, 128\), got shape \(4, 64\)"),
    (np.ones((4, 129), np.float32), r"expected \(q_len, 128\).*\(4, 129\)"),
    (np.ones((2, 4, 64), np.float32), r"expected \(q_len, 128\).*\(4, 64\)"),
    (np.ones(DIM, np.float32), r"query must be \(q_len, 128\) or \(batch, q_len, 128\), got shape \(128,\)"),
    (np.float32(1.0), r"got shape \(\)"),
    (np.ones((1, 2, 3, DIM), np.float32), r"got shape \(1, 2, 3, 128\)"),
    (np.zeros((0, DIM), np.float32), r"empty query"),
    (np.zeros((2, 0, DIM), np.float32), r"query 0: empty query"),
    ([], r"empty list of queries"),
], ids=["dim64", "dim129", "batch-dim64", "1-D", "scalar", "4-D", "0-tokens", "batch-0-tokens", "empty-list"])
def test_malformed_query_shape_is_a_value_error(searcher, query, pattern):
    with pytest.raises(ValueError, match=pattern):
        searcher.search(query, k=10)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_query_values_are_a_value_error(searcher, good, bad):
    q = good.copy()
    q[3, 7] = bad
    with pytest.raises(ValueError, match=r"query 0: token 3 is not finite \(NaN or inf\)"):
        searcher.search(q, k=10)
    batch = np.stack([good, q])
    with pytest.raises(ValueError, match=r"query 1: .*finite"):
        searcher.search(batch, k=10)
    with pytest.raises(ValueError, match=r"query 1: .*finite"):
        searcher.search([good, q], k=10)


def test_one_bad_query_in_a_ragged_list_is_named(searcher, good):
    with pytest.raises(ValueError, match=r"query 2: expected \(q_len, 128\), got shape \(5, 3\)"):
        searcher.search([good, good[:4], np.ones((5, 3), np.float32)], k=10)
    with pytest.raises(ValueError, match=r"query 1: empty query"):
        searcher.search([good, good[:0]], k=10)


@pytest.mark.parametrize("k", [0, -1, -100])
def test_non_positive_k_is_a_value_error(searcher, good, k):
    with pytest.raises(ValueError, match=rf"k must be a positive integer, got {k}"):
        searcher.search(good, k=k)


@pytest.mark.parametrize("k", [2.5, 10.0, "10", None, True, np.float32(3)], ids=repr)
def test_non_integer_k_is_a_value_error(searcher, good, k):
    with pytest.raises(ValueError, match=r"k must be a positive integer, got " + re.escape(repr(k))):
        searcher.search(good, k=k)


def test_bad_input_is_rejected_before_any_work(searcher, good):
    """A rejected query neither counts as a query nor touches the cache."""
    searcher.reset_stats()
    for bad, message in ((np.ones(DIM), r"query must be \(q_len"), (good[:, :5], r"expected \(q_len"),
                         (np.zeros((0, DIM)), "empty query")):
        with pytest.raises(ValueError, match=message):
            searcher.search(bad, k=10)
    st = searcher.stats()
    assert st["queries"] == 0 and st["misses"] == 0 and st["bytes_read"] == 0


def test_empty_batch_array_is_a_clear_value_error(searcher):
    with pytest.raises(ValueError, match="empty"):
        searcher.search(np.zeros((0, 32, DIM), np.float32), k=10)


def test_integer_query_error_names_the_dtype(searcher):
    with pytest.raises(ValueError, match="int32"):
        searcher.search(np.ones((4, DIM), np.int32), k=10)


def test_integer_query_is_a_value_error(searcher):
    with pytest.raises(ValueError, match="query 0"):
        searcher.search(np.ones((4, DIM), np.int32), k=10)


def test_float16_and_float64_queries_are_accepted(searcher, good):
    want = [i for i, _ in searcher.search(good, k=10)]
    assert [i for i, _ in searcher.search(good.astype(np.float64), k=10)] == want
    assert len(searcher.search(good.astype(np.float16), k=10)) == 10


@pytest.mark.parametrize("kwargs", [{"nprobe": -1}, {"ndocs": -5}])
def test_negative_nprobe_or_ndocs_is_a_value_error(engine_store, kwargs):
    with pytest.raises(ValueError, match="nprobe and ndocs must be positive"):
        lodestore.Searcher(engine_store, memory_budget="all", **kwargs)


@pytest.mark.parametrize("kwargs", [{"nprobe": 0}, {"ndocs": 0}])
def test_zero_nprobe_or_ndocs_is_a_value_error(engine_store, kwargs):
    with pytest.raises(ValueError, match="nprobe and ndocs must be positive"):
        lodestore.Searcher(engine_store, memory_budget="all", **kwargs)


# --------------------------------------------------------------------------- hostile queries


@pytest.mark.parametrize("scale, dtype", [(1e300, np.float64), (1e-300, np.float64), (1e30, np.float32),
                                          (1e-30, np.float32), (6e4, np.float16)], ids=repr)
def test_extreme_but_finite_queries_get_the_hits_of_the_unscaled_query(searcher, good, scale, dtype):
    """Scaling a query changes nothing (queries are unit-normalized, scaled first as documents are): a
    finite float64 of 1e300 used to become inf in the float32 cast or the norm, and return []."""
    want = searcher.search(good, k=10)
    q = (good.astype(np.float64) / np.abs(good).max() * scale).astype(dtype)
    assert np.isfinite(q).all()
    got = searcher.search(q, k=10)
    assert [i for i, _ in got][:5] == [i for i, _ in want][:5]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=2e-3 if dtype == np.float16 else 1e-5)


def test_queries_and_documents_share_one_normalization(searcher, good):
    """The engine normalizes queries with the store's own function (lodestore.store.normalize_rows)."""
    from lodestore.engine._args import normalize_query
    from lodestore.store import normalize_rows

    q = good * np.float32(3.0)
    np.testing.assert_array_equal(normalize_query(q), normalize_rows(q))
    zero = np.vstack([good[:2], np.zeros((1, DIM), np.float32)])
    assert (normalize_query(zero)[2] == 0).all()  # a query's zero row (a [PAD]) stays zero; a document's is an error
    with pytest.raises(ValueError, match="zero vector"):
        normalize_rows(zero)


@settings(max_examples=60, deadline=None)
@given(exp=st.integers(-300, 300), seed=st.integers(0, 2**31 - 1))
def test_normalize_rows_is_scale_free_over_float64_range(exp, seed):
    from lodestore.store import normalize_rows

    x = np.random.default_rng(seed).standard_normal((3, 16))
    unit = normalize_rows(x)
    scaled = normalize_rows(x * 10.0 ** exp)
    np.testing.assert_allclose(np.linalg.norm(scaled, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(scaled, unit, atol=1e-6)


def test_too_many_query_tokens_is_a_value_error_before_any_allocation(searcher, good):
    """A 100,000-token query (once 2.6 GB of score tables) is refused on its shape: the test's query is a
    broadcast view of 51 MB that takes no memory, and the refusal allocates next to none."""
    import tracemalloc

    huge = np.broadcast_to(good[:1], (100_000, DIM))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"query 0: 100000 token vectors, more than max_query_tokens=1024"):
            searcher.search(huge, k=10)
        with pytest.raises(ValueError, match=r"query 1: .*max_query_tokens"):
            searcher.search([good, huge], k=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert searcher.stats()["max_query_tokens"] == 1024


def test_max_query_tokens_is_configurable(engine_store, good):
    with lodestore.Searcher(engine_store, memory_budget="all", max_query_tokens=len(good)) as s:
        assert len(s.search(good, k=3)) == 3  # exactly the cap is fine
        with pytest.raises(ValueError, match=rf"{len(good) + 1} token vectors, more than max_query_tokens={len(good)}"):
            s.search(np.vstack([good, good[:1]]), k=3)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"], ids=repr)
def test_bad_max_query_tokens_is_a_value_error(engine_store, bad):
    with pytest.raises(ValueError, match=r"max_query_tokens must be a positive integer"):
        lodestore.Searcher(engine_store, memory_budget="all", max_query_tokens=bad)


@pytest.mark.parametrize("k", [100_001, 10**9, 10**30], ids=repr)
def test_huge_k_is_a_value_error(searcher, good, engine_store, k):
    with pytest.raises(ValueError, match=r"k must be at most 100000"):
        searcher.search(good, k=k)
    with pytest.raises(ValueError, match=r"k must be at most 100000"):
        lodestore.exhaustive_search(engine_store, good, k)


def test_k_beyond_the_store_returns_every_candidate(searcher, good):
    hits = searcher.search(good, k=5000)
    assert 10 < len(hits) <= 1000 and len({i for i, _ in hits}) == len(hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


# --------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("value, want", [
    ("256MB", 256_000_000),
    ("1GiB", 1 << 30),
    (1000, 1000),
    (0, 0),
    (1.5e6, 1_500_000),
    ("64mb", 64_000_000),
    (" 64 MB ", 64_000_000),
    ("1.5GiB", int(1.5 * (1 << 30))),
    ("512KiB", 512 * 1024),
    ("10k", 10_000),
    ("123", 123),
    ("7b", 7),
    ("all", None),
    ("ALL", None),
    (None, None),
], ids=repr)
def test_parse_size(value, want):
    assert parse_size(value) == want


@pytest.mark.parametrize("value", ["abc", "", "MB", "12XB", "1.2.3MB", "-5MB", -1, True, [64], "64 M B x"], ids=repr)
def test_parse_size_rejects_garbage(value):
    with pytest.raises(ValueError, match=r"memory budget"):
        parse_size(value)


def test_searcher_rejects_an_unparseable_budget(engine_store):
    with pytest.raises(ValueError, match=r"cannot parse memory budget 'lots'"):
        lodestore.Searcher(engine_store, memory_budget="lots")


# --------------------------------------------------------------------------- corruption


def _corrupt_first_residual_chunk(root: Path, engine_corpus) -> tuple[Path, list[int]]:
    """Flip a byte of the inner chunk at offset 0 of segment 1's first residual shard.

    Returns (the shard file, the global numbers of the documents with rows in that chunk),
    using the store's own reader to map the chunk to rows.
    """
    with lodestore.Store.open(root) as s:
        seg = s.segments[0]
        arr = seg.residuals
        shard_file = arr.shard_file(0)
        idx = arr.shard_index(0)  # (chunks, 2): [offset, nbytes]
        (chunk,) = np.nonzero(idx[:, 0] == 0)[0]
        assert idx[chunk, 1] == arr.inner_rows * arr.row_bytes + 4
        rows = (int(chunk) * arr.inner_rows, (int(chunk) + 1) * arr.inner_rows)
        offs = seg.doc_offsets
        docs = [d for d in range(seg.n_docs) if offs[d] < rows[1] and offs[d + 1] > rows[0]]
    assert shard_file.parent.parent.parent.name == "residuals" and shard_file.parent.parent.name == "c"
    data = bytearray(shard_file.read_bytes())
    data[17] ^= 0x40
    shard_file.write_bytes(bytes(data))
    return shard_file, docs


@pytest.mark.parametrize("threads", [1, 2])  # with 2, the chunk may be read by the query's helper thread
@pytest.mark.parametrize("placement", ["disk", "codes-in-RAM"])
def test_corrupt_residual_chunk_met_during_search_names_the_file(engine_store_copy, engine_corpus, budgets, placement,
                                                                   threads):
    shard_file, docs = _corrupt_first_residual_chunk(engine_store_copy, engine_corpus)
    assert docs
    query = engine_corpus.doc(docs[0])[:16]  # the document's own tokens: it is certainly a candidate
    with lodestore.Searcher(engine_store_copy, memory_budget=budgets[placement], threads=threads) as s:
        assert s.placement.name == placement
        with pytest.raises(lodestore.CorruptStoreError, match=re.escape(str(shard_file))) as err:
            s.search(query, k=10)
        assert "checksum mismatch" in str(err.value)
        # the error is not swallowed by the cache: asking again fails again
        with pytest.raises(lodestore.CorruptStoreError, match=re.escape(str(shard_file))):
            s.search(query, k=10)
        # documents away from the damaged chunk can still be searched in a subset
        far = engine_corpus.ids[-1]
        assert s.search(engine_corpus.doc(len(engine_corpus.ids) - 1)[:8], k=1, subset=[far])[0][0] == far


def test_corrupt_residual_chunk_fails_an_all_in_ram_searcher_at_open(engine_store_copy, engine_corpus):
    shard_file, _ = _corrupt_first_residual_chunk(engine_store_copy, engine_corpus)
    with pytest.raises(lodestore.CorruptStoreError, match=re.escape(str(shard_file))):
        lodestore.Searcher(engine_store_copy, memory_budget="all")


def test_corrupt_residual_chunk_in_a_small_subset(engine_store_copy, engine_corpus, budgets):
    """The small-subset path reads the subset's rows whole: the damaged document fails loudly."""
    shard_file, docs = _corrupt_first_residual_chunk(engine_store_copy, engine_corpus)
    with lodestore.Searcher(engine_store_copy, memory_budget=budgets["disk"]) as s:
        with pytest.raises(lodestore.CorruptStoreError, match=re.escape(str(shard_file))):
            s.search(engine_corpus.doc(500)[:8], k=3, subset=[engine_corpus.ids[docs[0]], engine_corpus.ids[500]])


# --------------------------------------------------------------------------- exhaustive_search


def test_exhaustive_search_rejects_bad_shapes_and_k(engine_store, good):
    with pytest.raises(ValueError, match=r"\(q_len, 128\)"):
        lodestore.exhaustive_search(engine_store, good[:, :64], 5)
    with pytest.raises(ValueError, match=r"empty query"):
        lodestore.exhaustive_search(engine_store, good[:0], 5)
    for k in (0, -3, 2.5):
        with pytest.raises(ValueError, match=r"k must be a positive integer"):
            lodestore.exhaustive_search(engine_store, good, k)


def test_exhaustive_search_rejects_nan(engine_store, good):
    q = good.copy()
    q[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"finite|NaN"):
        lodestore.exhaustive_search(engine_store, q, 5)
