"""Shared set-up of the engine tests: one small two-segment store, its queries, and reference answers.

The store is built once per session (a few seconds) and opened read-only;
tests that change or damage a store work on a copy (`engine_store_copy`).
Ground truth: `exhaustive_top10` (lodestore.exhaustive_search, batched) and
`exact_scores`, a hand-computed (query x document) MaxSim matrix over the
vectors store.get returns, which subset and deletion tests restrict by hand;
test_recall_small checks that the two agree.

Sizes: 1000 documents of about 90 tokens (dim 128, nbits 2, 256 centroids),
about 90k tokens: the residuals (32 bytes a token) outweigh the prefetch cache
minimum twice over, so a budget between "codes + 2 MiB" and "everything" gives
the codes-in-RAM placement.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

ENGINE_N_DOCS = 1000
ENGINE_DIM = 128
ENGINE_K = 256
ENGINE_SPLIT = 600  # first segment: documents [0, 600), second: [600, 1000)
ENGINE_N_QUERIES = 30
ENGINE_Q_LEN = 32


@dataclass
class EngineCorpus:
    """The synthetic corpus the engine store was built from (the original, uncompressed vectors)."""

    ids: list[str]
    tokens: np.ndarray  # (T, dim) float32 unit rows
    doclens: np.ndarray  # (n,) int64

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.doclens)])

    def doc(self, i: int) -> np.ndarray:
        o = self.offsets
        return self.tokens[o[i] : o[i + 1]]


@pytest.fixture(scope="module")
def one_blas_thread():
    """Reference computations on one BLAS thread (modules opt in with usefixtures): on a busy
    2-core machine a threaded 32 x 90 matrix product measured ~50x slower than a serial one.
    The Searcher limits itself the same way while it searches."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="session")
def engine_corpus() -> EngineCorpus:
    from lodestore.store.testing.synthetic import make_corpus

    tokens, doclens = make_corpus(ENGINE_N_DOCS, ENGINE_DIM, mean_len=90, min_len=16, max_len=250, seed=7)
    return EngineCorpus([f"d{i:04d}" for i in range(ENGINE_N_DOCS)], tokens, doclens)


@pytest.fixture(scope="session")
def engine_store_path(tmp_path_factory, engine_corpus) -> Path:
    """A committed two-segment store of the engine corpus. Never change it: copy it (engine_store_copy)."""
    import lodestore

    path = tmp_path_factory.mktemp("engine") / "store"
    c = engine_corpus
    docs = [c.doc(i) for i in range(len(c.ids))]
    with lodestore.Store.create(path, dim=ENGINE_DIM, nbits=2, num_centroids=ENGINE_K, seed=1) as s:
        s.add(c.ids[:ENGINE_SPLIT], docs[:ENGINE_SPLIT])
        s.add(c.ids[ENGINE_SPLIT:], docs[ENGINE_SPLIT:])
    return path


@pytest.fixture(scope="session")
def engine_store(engine_store_path):
    """The engine store, opened read-only once for the session."""
    import lodestore

    s = lodestore.Store.open(engine_store_path)
    yield s
    s.close()


@pytest.fixture
def engine_store_copy(engine_store_path, tmp_path) -> Path:
    """A private copy of the engine store, for tests that delete from it or damage it."""
    dst = tmp_path / "store"
    shutil.copytree(engine_store_path, dst)
    return dst


@pytest.fixture(scope="session")
def engine_queries(engine_corpus) -> np.ndarray:
    """(30, 32, dim) float32 unit queries aimed at random documents of the corpus."""
    from lodestore.store.testing.synthetic import make_queries

    c = engine_corpus
    queries, _targets = make_queries(c.tokens, c.doclens, ENGINE_N_QUERIES, ENGINE_Q_LEN, seed=3)
    return queries


@dataclass
class Decoded:
    """Every live document of the engine store as store.get(id) returns it, concatenated."""

    ids: list[str]
    tokens: np.ndarray  # (T, dim) float32
    doclens: np.ndarray  # (n,) int64
    index: dict[str, int]


@pytest.fixture(scope="session")
def decoded(engine_store) -> Decoded:
    ids = engine_store.ids()
    docs = [engine_store.get(i) for i in ids]
    return Decoded(ids, np.concatenate(docs), np.array([len(d) for d in docs], np.int64),
                   {d: n for n, d in enumerate(ids)})


def maxsim_matrix(queries: np.ndarray, tokens: np.ndarray, doclens: np.ndarray, block: int = 4) -> np.ndarray:
    """(n_queries, n_docs) exact MaxSim of L2-normalized queries against concatenated documents.

    The same sum-of-max as the engine, written independently (one matmul per block of queries,
    one segmented max): the reference every recall and subset test compares with.
    """
    queries = np.asarray(queries, dtype=np.float32)
    queries = queries / np.linalg.norm(queries, axis=2, keepdims=True)
    starts = np.concatenate([[0], np.cumsum(doclens)[:-1]]).astype(np.int64)
    out = np.empty((len(queries), len(doclens)), dtype=np.float64)
    q_len = queries.shape[1]
    for b in range(0, len(queries), block):
        qs = queries[b : b + block]
        sim = qs.reshape(-1, qs.shape[2]) @ tokens.T  # (block * q_len, T)
        mx = np.maximum.reduceat(sim, starts, axis=1)  # (block * q_len, n_docs)
        out[b : b + len(qs)] = mx.reshape(len(qs), q_len, -1).sum(axis=1, dtype=np.float64)
    return out


@pytest.fixture(scope="session")
def exact_scores(decoded, engine_queries) -> np.ndarray:
    """(30, n_docs) exact MaxSim of every engine query against every decoded document (columns: decoded.ids)."""
    with threadpool_limits(limits=1, user_api="blas"):
        return maxsim_matrix(engine_queries, decoded.tokens, decoded.doclens)


@pytest.fixture(scope="session")
def exhaustive_top10(engine_store, engine_queries) -> list[list[tuple[str, float]]]:
    """lodestore.exhaustive_search's top 10 of every engine query (one batched call: one decode pass)."""
    import lodestore

    with threadpool_limits(limits=1, user_api="blas"):
        return lodestore.exhaustive_search(engine_store, engine_queries, 10)


def _top(scores: np.ndarray, ids: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [(ids[i], float(scores[i])) for i in order]


@pytest.fixture(scope="session")
def exact_top10(exact_scores, decoded) -> list[list[tuple[str, float]]]:
    """The exact top 10 (id, score) of every engine query over the whole store, by hand."""
    return [_top(row, decoded.ids, 10) for row in exact_scores]


def _exact_maxsim(query: np.ndarray, doc: np.ndarray) -> float:
    q = np.asarray(query, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return float((q @ np.asarray(doc, dtype=np.float64).T).max(axis=1).sum())


@pytest.fixture(scope="session")
def exact_maxsim():
    """exact_maxsim(query, doc) -> float: naive float64 MaxSim of the L2-normalized query."""
    return _exact_maxsim


@pytest.fixture(scope="session")
def budgets(engine_store) -> dict[str, int | str]:
    """Memory budgets giving each placement, computed from the sizes the engine reports for this store."""
    import lodestore
    from lodestore.engine._budget import MIN_CACHE

    with lodestore.Searcher(engine_store, memory_budget="all") as s:
        index = s.placement.index_bytes
        tokens = s.corpus.tokens()
        codes = tokens * s.corpus.codec.code_dtype.itemsize
        residuals = tokens * s.corpus.codec.residual_bytes
        unpageable = index - s.corpus.pageable_bytes()
    assert residuals > 2 * MIN_CACHE, "the engine store is too small to have a codes-in-RAM placement"
    return {
        "all-in-RAM": "all",
        # room for the index, the codes and more than the minimum cache, but not the residuals
        "codes-in-RAM": index + codes + 2 * MIN_CACHE + (residuals - 2 * MIN_CACHE) // 2,
        "disk": index + MIN_CACHE,  # the index and the smallest cache: every row read from disk
        "index-paged": unpageable + MIN_CACHE,  # the smallest budget: the index paged from a file too
    }


def _recall(got: list[tuple[str, float]], truth: list[tuple[str, float]]) -> float:
    want = {i for i, _ in truth}
    return len(want & {i for i, _ in got}) / len(want) if want else 1.0


@pytest.fixture(scope="session")
def recall():
    """recall(got_hits, true_hits) -> fraction of the true ids found."""
    return _recall
