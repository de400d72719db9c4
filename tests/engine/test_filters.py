"""Searcher.search(where=, params=): the top-k among live matching documents, as exhaustive MaxSim restricted to
them ranks them, at every selectivity; filters follow deletes, upserts, compaction, reopen and refresh; a bad
filter is refused before any search work."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lodestore
from lodestore.engine import Searcher, exhaustive_search

DIM = 32
N = 1500  # more than the default ndocs (1024): both ways of filtering candidates are taken (engine/_filter.py)
LANGS = ["en", "fr", "de", "es"]


def corpus(n: int, seed: int):
    from lodestore.store.testing.synthetic import make_corpus

    tokens, lens = make_corpus(n, DIM, mean_len=10, min_len=4, max_len=20, seed=seed)
    off = np.concatenate([[0], np.cumsum(lens)])
    return [tokens[off[i]:off[i + 1]] for i in range(n)]


def metadata(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"u": float(rng.random()), "lang": LANGS[int(rng.integers(4))], "year": int(rng.integers(1990, 2025)),
             "tags": [t for t in ("x", "y", "z") if rng.random() < 0.3]} | ({"extra": None} if i % 5 else {})
            for i in range(n)]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("filters") / "s"
    docs, meta = corpus(N, 3), metadata(N, 4)
    ids = [f"d{i}" for i in range(N)]
    with lodestore.Store.create(path, dim=DIM, nbits=2, num_centroids=64, seed=1) as s:
        s.add(ids[:900], docs[:900], metadata=meta[:900])
        s.add(ids[900:], docs[900:], metadata=meta[900:])
        s.delete(ids[::11])
    return path


@pytest.fixture(scope="module")
def opened(store_path):
    store = lodestore.Store.open(store_path)
    searcher = Searcher(store)
    yield store, searcher
    searcher.close()
    store.close()


@pytest.fixture(scope="module")
def queries():
    rng = np.random.default_rng(5)
    docs = corpus(N, 3)
    return [docs[i][:6] + 0.3 * rng.standard_normal((min(6, len(docs[i])), DIM)).astype(np.float32)
            for i in rng.choice(N, 12, replace=False)]


def assert_same_ranking(got, want):
    """Same scores rank by rank (ids may swap only between equal scores), same ids where scores differ."""
    assert len(got) == len(want)
    assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-4), (got, want)
    tied = {i for (i, s) in want if sum(abs(s - t) < 1e-4 for _, t in want) > 1}
    assert {i for i, _ in got} - tied == {i for i, _ in want} - tied


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(sel=st.sampled_from([0.001, 0.003, 0.01, 0.05, 0.2, 0.5, 0.8, 1.0]), k=st.sampled_from([1, 5, 10]),
       q=st.integers(0, 11), lang=st.sampled_from([None] + LANGS))
def test_filtered_search_equals_filtered_exhaustive(opened, queries, sel, k, q, lang):
    store, searcher = opened
    where, params = "u < ?", [sel]
    if lang is not None:
        where, params = "u < ? AND (lang = ? OR tags CONTAINS 'x')", [sel, lang]
    got = searcher.search(queries[q], k, where=where, params=params)
    want = exhaustive_search(store, queries[q], k, where=where, params=params)
    assert_same_ranking(got, want)
    meta = dict(zip((i for i, _ in got), store.get_metadata([i for i, _ in got])))
    for doc_id, _ in got:
        assert int(doc_id[1:]) % 11 != 0, "a deleted document was returned"
        m = meta[doc_id]
        assert m["u"] < sel and (lang is None or m["lang"] == lang or "x" in m["tags"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_random_metadata_on_small_stores(tmp_path_factory, data):
    """Random typed metadata (nulls included) and random comparisons, on stores built per example."""
    n = data.draw(st.integers(5, 60))
    values = st.one_of(st.none(), st.integers(0, 4))
    meta = [{"a": data.draw(values), "c": data.draw(st.sampled_from(["p", "q", None]))} for _ in range(n)]
    meta[0]["a"], meta[0]["c"] = 1, "p"  # every field has a type
    path = tmp_path_factory.mktemp("small") / "s"
    docs = corpus(n, data.draw(st.integers(0, 3)))
    with lodestore.Store.create(path, dim=DIM, nbits=2, num_centroids=8) as s:
        s.add([f"n{i}" for i in range(n)], docs, metadata=meta)
        op = data.draw(st.sampled_from(["<", "<=", "=", "!=", ">=", ">"]))
        where = data.draw(st.sampled_from([f"a {op} ?", f"a {op} ? OR c IS NULL", f"NOT (a {op} ?) AND c = 'p'",
                                           f"a {op} ? AND c IN ('q', 'p')"]))
        params = [data.draw(st.integers(-1, 5))]
        q = docs[data.draw(st.integers(0, n - 1))][:4]
        with Searcher(s) as searcher:
            assert_same_ranking(searcher.search(q, 10, where=where, params=params),
                                exhaustive_search(s, q, 10, where=where, params=params))


def test_filters_follow_delete_upsert_compact_reopen_and_refresh(tmp_path):
    docs, meta = corpus(200, 8), metadata(200, 9)
    ids = [f"d{i}" for i in range(200)]
    path = tmp_path / "s"
    q = docs[7][:5]
    with lodestore.Store.create(path, dim=DIM, nbits=2, num_centroids=16) as s:
        s.add(ids, docs, metadata=meta)
        reader = Searcher(path)
        english = {i for i, m in zip(ids, meta) if m["lang"] == "en"}
        top = reader.search(q, 300, where="lang = ?", params=["en"])
        assert {i for i, _ in top} == english
        gone = sorted(english)[:10]
        s.delete(gone)
        s.add(["d7"], [docs[7]], metadata=[{"lang": "zz", "u": 0.5}], upsert=True)  # leaves "en" (or stays out)
        s.add(["new"], [docs[7]], metadata=[{"lang": "en"}])
        assert reader.refresh()
        want = (english - set(gone) - {"d7"}) | {"new"}
        assert {i for i, _ in reader.search(q, 300, where="lang = ?", params=["en"])} == want
        assert [i for i, _ in reader.search(q, 5, where="lang = 'zz'")] == ["d7"]
        s.compact()
        assert reader.refresh()
        assert {i for i, _ in reader.search(q, 300, where="lang = ?", params=["en"])} == want
        assert_same_ranking(reader.search(q, 10, where="lang = 'en' AND u < 0.5"),
                            exhaustive_search(s, q, 10, where="lang = 'en' AND u < 0.5"))
        reader.close()
    with Searcher(path) as reopened:
        assert {i for i, _ in reopened.search(q, 300, where="lang = ?", params=["en"])} == want
        assert reopened.search(q, 5, where="lang = 'nobody'") == []


def test_matching_ids_lists_the_live_matching_documents(opened):
    store, searcher = opened
    ids = store.ids()
    want = [i for i, m in zip(ids, store.get_metadata(ids)) if m["lang"] == "fr" and m["year"] < 2000]
    assert searcher.matching_ids("lang = ? AND year < ?", ["fr", 2000]) == want and want
    with pytest.raises(ValueError, match="unknown metadata field"):
        searcher.matching_ids("nope = 1")


def test_where_and_subset_intersect(opened, queries):
    store, searcher = opened
    subset = [f"d{i}" for i in range(1, 400) if i % 11]
    got = searcher.search(queries[0], 50, subset=subset, where="year >= ?", params=[2010])
    meta = store.get_metadata([i for i, _ in got])
    assert got and all(i in subset and m["year"] >= 2010 for (i, _), m in zip(got, meta))


@pytest.mark.parametrize("where, params, message", [
    ("u <", (), "expected a value"),
    ("missing = 1", (), "unknown metadata field 'missing'"),
    ("u < ?", (), "more '?' placeholders"),
    ("u < ?", (1, 2), "2 params were given"),
    ("lang = ?", (3,), "'lang' is a str field"),
    ("lang = ?; DROP TABLE x", ("en",), "unexpected character ';'"),
    (None, (1,), "params were given without a where"),
])
def test_bad_filters_are_refused_before_any_search_work(opened, queries, where, params, message):
    _, searcher = opened
    before = searcher.stats()
    with pytest.raises(ValueError) as e:
        searcher.search(queries[0], 10, where=where, params=params)
    assert message in str(e.value)
    after = searcher.stats()
    assert (after["queries"], after["bytes_read"], after["read_calls"]) == \
        (before["queries"], before["bytes_read"], before["read_calls"])


def test_injection_strings_as_params_match_nothing_and_change_nothing(opened, queries, store_path):
    store, searcher = opened
    generation = store.generation
    for attack in ["en' OR '1'='1", "'; DROP TABLE m; --", "en\" OR 1=1", "%"]:
        assert searcher.search(queries[0], 10, where="lang = ?", params=[attack]) == []
    with lodestore.Store.open(store_path) as again:
        assert again.generation == generation and again.verify().ok
    assert searcher.stats()["metadata_bytes"] > 0
