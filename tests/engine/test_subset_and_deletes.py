"""Subset search (only the allowed ids, exact over a small subset), deletions, empty stores."""

from __future__ import annotations

import numpy as np
import pytest

import lodestore

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module", params=["all-in-RAM", "disk"])
def searcher(request, engine_store, budgets):
    s = lodestore.Searcher(engine_store, memory_budget=budgets[request.param])
    assert s.placement.name == request.param
    yield s
    s.close()


def restricted_top(scores_row: np.ndarray, decoded, subset: list[str], k: int) -> list[tuple[str, float]]:
    """Exact top-k over `subset` only, from the reference scores of every document."""
    cols = np.array([decoded.index[i] for i in subset])
    sub = scores_row[cols]
    order = np.argsort(-sub, kind="stable")[:k]
    return [(subset[j], float(sub[j])) for j in order]


def small_subset(exact_scores, decoded, qi: int, n: int = 25, seed: int = 0) -> list[str]:
    """n ids: a few of query qi's best documents (so the subset matters) and random others."""
    rng = np.random.default_rng(seed + qi)
    best = np.argsort(-exact_scores[qi])[: n // 5]
    others = rng.choice(len(decoded.ids), size=n, replace=False)
    picked = list(dict.fromkeys(best.tolist() + others.tolist()))[:n]
    rng.shuffle(picked)
    return [decoded.ids[i] for i in picked]


def test_small_subset_is_exact_over_the_subset(searcher, engine_queries, exact_scores, decoded):
    for qi in range(0, 30, 3):
        subset = small_subset(exact_scores, decoded, qi)
        got = searcher.search(engine_queries[qi], k=10, subset=subset)
        want = restricted_top(exact_scores[qi], decoded, subset, 10)
        assert {i for i, _ in got} <= set(subset)
        assert [i for i, _ in got] == [i for i, _ in want], qi
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-4)


def test_subset_smaller_than_k_returns_all_of_it_best_first(searcher, engine_queries, exact_scores, decoded):
    subset = small_subset(exact_scores, decoded, 4, n=6)
    got = searcher.search(engine_queries[4], k=10, subset=subset)
    want = restricted_top(exact_scores[4], decoded, subset, 10)
    assert len(got) == 6
    assert [i for i, _ in got] == [i for i, _ in want]


def test_subset_with_duplicates_and_a_single_id(searcher, engine_queries, decoded):
    one = decoded.ids[17]
    assert [i for i, _ in searcher.search(engine_queries[0], k=5, subset=[one, one, one])] == [one]
    assert searcher.search(engine_queries[0], k=5, subset=(one,))[0][0] == one


def test_empty_subset_returns_nothing(searcher, engine_queries):
    assert searcher.search(engine_queries[0], k=10, subset=[]) == []
    assert searcher.search(engine_queries[:2], k=10, subset=[]) == [[], []]


def test_large_subset_returns_only_subset_ids(searcher, engine_queries, exact_scores, decoded, recall, exact_maxsim,
                                              engine_store, monkeypatch):
    """A subset larger than ndocs goes through candidate generation, filtered to the subset."""
    monkeypatch.setattr(searcher, "settings", searcher.settings)  # restored after the test
    searcher.set_search_options(ndocs=256)  # the default (1024) exceeds this corpus of ~1,000 documents
    rng = np.random.default_rng(11)
    subset = [decoded.ids[i] for i in rng.choice(len(decoded.ids), size=700, replace=False)]
    allowed = set(subset)
    assert len(subset) > searcher.ndocs
    queries = engine_queries[:12]
    got_all = searcher.search(queries, k=10, subset=subset)
    recalls = []
    for qi, got in enumerate(got_all):
        assert len(got) == 10
        assert {i for i, _ in got} <= allowed, qi
        recalls.append(recall(got, restricted_top(exact_scores[qi], decoded, subset, 10)))
        for doc_id, score in got[:3]:
            assert score == pytest.approx(exact_maxsim(queries[qi], engine_store.get(doc_id)), abs=1e-4)
    assert np.mean(recalls) >= 0.9, recalls


def test_batch_subset_applies_to_every_query(searcher, engine_queries, exact_scores, decoded):
    subset = small_subset(exact_scores, decoded, 0, n=30)
    batch = searcher.search(engine_queries[:5], k=10, subset=subset)
    assert batch == [searcher.search(q, k=10, subset=subset) for q in engine_queries[:5]]
    for hits in batch:
        assert {i for i, _ in hits} <= set(subset)


def test_unknown_subset_id_is_a_value_error_naming_it(searcher, engine_queries, decoded):
    with pytest.raises(ValueError, match="no-such-doc-42"):
        searcher.search(engine_queries[0], k=10, subset=[decoded.ids[0], "no-such-doc-42", decoded.ids[1]])
    with pytest.raises(ValueError, match="ghost"):
        searcher.search(engine_queries[:2], k=10, subset=["ghost"])


# --------------------------------------------------------------------------- deletions


def test_deleted_documents_never_appear(engine_store_copy, engine_queries, exact_scores, decoded, budgets, recall):
    # the top hits of some queries, as a searcher on the intact store sees them
    with lodestore.Searcher(engine_store_copy, memory_budget="all") as s:
        tops = [s.search(q, k=2) for q in engine_queries[:8]]
    victims = sorted({hits[0][0] for hits in tops} | {tops[0][1][0]})
    with lodestore.Store.open(engine_store_copy, writable=True) as w:
        w.delete(victims[: len(victims) // 2])  # two commits: deletions in both
        w.delete(victims[len(victims) // 2 :])
    dead = set(victims)
    live_cols = np.array([j for j, i in enumerate(decoded.ids) if i not in dead])
    live_ids = [decoded.ids[j] for j in live_cols]
    for name in ("all-in-RAM", "disk"):
        with lodestore.Searcher(engine_store_copy, memory_budget=budgets[name]) as s:
            assert s.placement.name == name
            results = s.search(engine_queries, k=10)
            recalls = []
            for qi, hits in enumerate(results):
                assert not dead & {i for i, _ in hits}, (name, qi)
                assert len(hits) == 10
                row = exact_scores[qi][live_cols]
                want = [(live_ids[j], float(row[j])) for j in np.argsort(-row, kind="stable")[:10]]
                recalls.append(recall(hits, want))
            assert np.mean(recalls) >= 0.9, (name, recalls)
            big = s.search(engine_queries[0], k=200)
            assert not dead & {i for i, _ in big}
            for victim in victims:  # a deleted id is no longer a valid subset member
                with pytest.raises(ValueError, match=victim):
                    s.search(engine_queries[0], k=5, subset=[victim])
            # a subset of only live documents around the deleted ones still works
            assert {i for i, _ in s.search(engine_queries[0], k=5, subset=live_ids[:40])} <= set(live_ids[:40])
    # exhaustive search agrees that they are gone
    with lodestore.Store.open(engine_store_copy) as r:
        assert not dead & {i for i, _ in lodestore.exhaustive_search(r, engine_queries[0], 50)}


def test_searcher_on_a_store_object_after_delete_sees_it(store_copy, template_corpus):
    """A Searcher built on a writable Store after its delete commit sees the deletion."""
    with lodestore.Store.open(store_copy, writable=True) as w:
        q = template_corpus.docs[5][:8]
        with lodestore.Searcher(w, memory_budget="all") as s:
            assert s.search(q, k=1)[0][0] == template_corpus.ids[5]
        w.delete([template_corpus.ids[5]])
        with lodestore.Searcher(w, memory_budget="all") as s:
            hits = s.search(q, k=len(template_corpus))
        assert template_corpus.ids[5] not in {i for i, _ in hits}
        assert len(hits) == len(template_corpus) - 1


def test_store_with_every_document_deleted_returns_nothing(store_copy, template_corpus):
    with lodestore.Store.open(store_copy, writable=True) as w:
        w.delete(template_corpus.ids)
    q = template_corpus.docs[0][:4]
    for budget in ("all", 0):
        with lodestore.Searcher(store_copy, memory_budget=budget) as s:
            assert s.search(q, k=5) == []
            assert s.search(np.stack([q, q]), k=5) == [[], []]
    with lodestore.Store.open(store_copy) as r:
        assert lodestore.exhaustive_search(r, q, 5) == []


# --------------------------------------------------------------------------- empty store


def test_searcher_on_an_empty_store_is_a_clear_value_error(tmp_path):
    path = tmp_path / "empty"
    with lodestore.Store.create(path, dim=32, nbits=2, num_centroids=8) as s:
        with pytest.raises(ValueError, match="empty"):
            lodestore.Searcher(s)
    with pytest.raises(ValueError, match=r"empty.*add documents"):
        lodestore.Searcher(path, memory_budget="all")
    with pytest.raises(ValueError, match="empty"):
        lodestore.Searcher(str(path), memory_budget=0)
