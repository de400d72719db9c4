"""Searcher.search against exhaustive exact MaxSim, in each memory placement.

Each placement is reached with a budget computed from the sizes the engine
reports for the store (conftest `budgets`); the test asserts the placement it
meant to get, so a change in the placement rule cannot silently test the wrong path.
"""

from __future__ import annotations

import numpy as np
import pytest

import lodestore

PLACEMENTS = ["all-in-RAM", "codes-in-RAM", "disk", "codes-in-RAM+prefetch", "disk+prefetch"]

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module", params=PLACEMENTS)
def searcher(request, engine_store, budgets):
    """One searcher per placement, with and without the prefetch threads."""
    placement, _, prefetch = request.param.partition("+")
    s = lodestore.Searcher(engine_store, memory_budget=budgets[placement], prefetch=bool(prefetch))
    assert s.placement.name == placement, f"budget {budgets[placement]!r} gave {s.placement}"
    assert s.stats()["placement"]["name"] == placement and s.stats()["prefetch"] == bool(prefetch)
    yield s
    s.close()


@pytest.fixture(scope="module")
def one_at_a_time(searcher, engine_queries):
    """search(q, k=10) of every engine query, one call each (computed once per placement)."""
    return [searcher.search(q, k=10) for q in engine_queries]


def test_hand_reference_agrees_with_exhaustive_search(engine_store, engine_queries, exhaustive_top10, exact_top10):
    """The subset and deletion tests restrict a hand-computed score matrix (conftest: one pass over
    store.get's vectors); it must be exhaustive_search's answer. Batched exhaustive_search must
    also answer like one query at a time."""
    assert len(exhaustive_top10) == len(engine_queries)
    for got, truth in zip(exhaustive_top10, exact_top10):
        assert [i for i, _ in got] == [i for i, _ in truth]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in truth], atol=1e-4)
    for qi in (0, 17):
        assert lodestore.exhaustive_search(engine_store, engine_queries[qi], 10) == exhaustive_top10[qi]


def test_recall_at_10_against_exhaustive_search(searcher, one_at_a_time, exhaustive_top10, recall):
    recalls = [recall(got, truth) for got, truth in zip(one_at_a_time, exhaustive_top10)]
    assert np.mean(recalls) >= 0.9, f"{searcher.placement.name}: recall@10 {np.mean(recalls):.3f}: {recalls}"


def test_hits_are_ten_distinct_ids_best_first(one_at_a_time, engine_store):
    for hits in one_at_a_time:
        assert len(hits) == 10
        ids = [i for i, _ in hits]
        assert len(set(ids)) == 10
        assert all(isinstance(i, str) and i in engine_store for i in ids)
        scores = [s for _, s in hits]
        assert all(isinstance(s, float) for s in scores)
        assert scores == sorted(scores, reverse=True)


def test_scores_are_exact_maxsim_of_the_stored_vectors(one_at_a_time, engine_queries, engine_store, exact_maxsim):
    for q, hits in zip(engine_queries, one_at_a_time):
        for doc_id, score in hits:
            assert score == pytest.approx(exact_maxsim(q, engine_store.get(doc_id)), abs=1e-4), doc_id


def test_scores_agree_with_exhaustive_search(one_at_a_time, exhaustive_top10):
    """Wherever the searcher found one of the true top 10, it reports the same score for it."""
    for got, truth in zip(one_at_a_time, exhaustive_top10):
        found = dict(got)
        for doc_id, score in truth:
            if doc_id in found:
                assert found[doc_id] == pytest.approx(score, abs=1e-4)


def test_batch_search_equals_one_at_a_time(searcher, engine_queries, one_at_a_time):
    batch = searcher.search(engine_queries, k=10)
    assert isinstance(batch, list) and len(batch) == len(engine_queries)
    assert batch == one_at_a_time


def test_ragged_list_of_queries_equals_one_at_a_time(searcher, engine_queries, one_at_a_time):
    lengths = [32, 5, 17, 1, 32, 9]
    queries = [engine_queries[i][:n] for i, n in enumerate(lengths)]
    got = searcher.search(queries, k=10)
    assert len(got) == len(queries)
    for q, hits in zip(queries, got):
        assert hits == searcher.search(q, k=10)
    assert got[0] == one_at_a_time[0]


def test_k_larger_and_smaller(searcher, engine_queries, one_at_a_time):
    q = engine_queries[0]
    top3 = searcher.search(q, k=3)
    assert top3 == one_at_a_time[0][:3]
    top50 = searcher.search(q, k=50)
    assert len(top50) == 50
    assert len({i for i, _ in top50}) == 50
    assert [s for _, s in top50] == sorted((s for _, s in top50), reverse=True)
    assert searcher.search(q, k=np.int64(10)) == one_at_a_time[0]


def test_torch_query_gives_the_same_results_as_numpy(searcher, engine_queries, one_at_a_time):
    torch = pytest.importorskip("torch")
    assert searcher.search(torch.from_numpy(engine_queries[1]), k=10) == one_at_a_time[1]
    batch = torch.from_numpy(engine_queries[:4])
    assert searcher.search(batch, k=10) == one_at_a_time[:4]
    assert searcher.search([torch.from_numpy(q) for q in engine_queries[:2]], k=10) == one_at_a_time[:2]
    # float64 and float16 tensors: the ids agree (the scores only up to the input's rounding)
    got64 = searcher.search(torch.from_numpy(engine_queries[2]).double(), k=10)
    assert [i for i, _ in got64] == [i for i, _ in one_at_a_time[2]]


def test_unnormalized_query_scores_like_the_normalized_one(searcher, engine_queries, one_at_a_time):
    """Query rows are L2-normalized before scoring: scaling them changes nothing that matters."""
    scaled = engine_queries[3] * np.linspace(0.5, 3.0, len(engine_queries[3]), dtype=np.float32)[:, None]
    got = searcher.search(scaled, k=10)
    assert [i for i, _ in got] == [i for i, _ in one_at_a_time[3]]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in one_at_a_time[3]], atol=1e-4)


def test_stats_describe_the_placement(searcher, engine_queries):
    searcher.prefetcher.clear()  # earlier tests warmed the cache: start cold, so rows must be read
    searcher.reset_stats()
    searcher.search(engine_queries[:3], k=10)
    st = searcher.stats()
    assert st["queries"] == 3
    assert st["placement"]["name"] == searcher.placement.name
    assert 0.0 <= st["hit_rate"] <= 1.0
    assert st["io_wait_s"] >= 0.0
    assert st["resident_bytes"] >= st["placement"]["index_bytes"]
    if searcher.placement.name == "all-in-RAM":
        assert st["bytes_read"] == 0 and st["read_calls"] == 0
    else:
        assert st["bytes_read"] > 0 and st["read_calls"] > 0
        assert st["hits"] + st["waited"] + st["misses"] > 0


# --------------------------------------------------------------------------- the torch re-ranking path


def test_torch_rerank_path_matches_numpy_on_cpu(engine_store, engine_queries, monkeypatch):
    """Searcher uses maxsim_torch whenever device != "cpu"; "cpu:0" is a torch CPU device, so it
    forces the torch path without a GPU. Its results must match the numpy path's."""
    pytest.importorskip("torch")
    import lodestore.engine._rerank as searcher_mod

    calls = []
    real = searcher_mod.maxsim_torch

    def counting(*args, **kwargs):
        calls.append(args[-1] if args else kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(searcher_mod, "maxsim_torch", counting)
    with lodestore.Searcher(engine_store, memory_budget="all", device="cpu") as numpy_path, \
            lodestore.Searcher(engine_store, memory_budget="all", device="cpu:0") as torch_path:
        queries = engine_queries[:8]
        want = numpy_path.search(queries, k=10)
        assert calls == []  # the numpy path never touches torch
        got = torch_path.search(queries, k=10)
        assert calls == ["cpu:0"] * len(queries)
    for g, w in zip(got, want):
        assert [i for i, _ in g] == [i for i, _ in w]
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_rerank_matches_numpy(engine_store, engine_queries):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with lodestore.Searcher(engine_store, memory_budget="all") as cpu, \
            lodestore.Searcher(engine_store, memory_budget="all", device="cuda") as gpu:
        want = cpu.search(engine_queries[:8], k=10)
        got = gpu.search(engine_queries[:8], k=10)
    for g, w in zip(got, want):
        assert [i for i, _ in g] == [i for i, _ in w]
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], rtol=1e-4, atol=1e-4)
