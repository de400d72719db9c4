"""The Searcher and exhaustive search over a store with the pq codec.

The engine decodes pq rows through the store's codec (one gather from the codebooks for
every candidate token, then BLAS): the same pipeline as the scalar codec, so the same
recall bar applies, in RAM and from disk.
"""

from __future__ import annotations

import numpy as np
import pytest

import lodestore
from lodestore.store import PQCodec

ENGINE_DIM, ENGINE_K, ENGINE_SPLIT = 128, 256, 600  # as the engine store (conftest.py)

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module", params=[32, 128])  # 128: a wide codec (reader feature codec-pq-wide), 1-d subspaces
def pq_store(tmp_path_factory, engine_corpus, request):
    path = tmp_path_factory.mktemp("engine_pq") / "store"
    c = engine_corpus
    docs = [c.doc(i) for i in range(len(c.ids))]
    with lodestore.Store.create(path, dim=ENGINE_DIM, codec="pq", pq_subspaces=request.param, num_centroids=ENGINE_K,
                                seed=1) as s:
        s.add(c.ids[:ENGINE_SPLIT], docs[:ENGINE_SPLIT])
        s.add(c.ids[ENGINE_SPLIT:], docs[ENGINE_SPLIT:])
    s = lodestore.Store.open(path)
    yield s
    s.close()


@pytest.fixture(scope="module")
def pq_exhaustive(pq_store, engine_queries):
    return lodestore.exhaustive_search(pq_store, engine_queries, 10)


@pytest.mark.parametrize("budget", ["all", "1MB"])
def test_pq_searcher_recall_against_exhaustive(pq_store, engine_queries, pq_exhaustive, recall, exact_maxsim, budget):
    assert isinstance(pq_store.codec, PQCodec)
    with lodestore.Searcher(pq_store, memory_budget=budget) as s:
        got = [s.search(q, k=10) for q in engine_queries]
    recalls = [recall(g, t) for g, t in zip(got, pq_exhaustive)]
    assert np.mean(recalls) >= 0.9, recalls
    for q, hits in zip(engine_queries[:5], got[:5]):  # scores are exact MaxSim of the decoded vectors
        for doc_id, score in hits:
            assert score == pytest.approx(exact_maxsim(q, pq_store.get(doc_id)), abs=1e-4)


def test_pq_exhaustive_finds_what_the_raw_vectors_find(pq_store, engine_corpus, engine_queries, recall):
    """The pq store's exhaustive top 10 against exact MaxSim over the uncompressed corpus."""
    c = engine_corpus
    starts = c.offsets[:-1]
    raw = np.stack([np.maximum.reduceat(q @ c.tokens.T, starts, axis=1).sum(axis=0) for q in engine_queries])
    truth = [[(engine_corpus.ids[i], 0.0) for i in np.argsort(-row, kind="stable")[:10]] for row in raw]
    got = lodestore.exhaustive_search(pq_store, engine_queries, 10)
    assert np.mean([recall(g, t) for g, t in zip(got, truth)]) >= 0.9
