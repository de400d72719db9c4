"""The seeded synthetic embeddings (store.testing.synthetic) and tools.make_bundle."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lodestore.store.testing.synthetic import (
    BLOCK_DOCS,
    cluster_centres,
    corpus_doclens,
    default_n_clusters,
    iter_corpus_chunks,
    make_corpus,
    make_queries,
)
from tools import make_bundle


def maxsim_scores(queries: np.ndarray, docs: np.ndarray, doclens: np.ndarray, batch: int = 16) -> np.ndarray:
    """Exact ColBERT scores (n_queries, n_docs): sum over query tokens of the max dot product in each doc."""
    starts = np.concatenate([[0], np.cumsum(doclens)[:-1]])
    scores = np.empty((len(queries), len(doclens)), dtype=np.float32)
    for i in range(0, len(queries), batch):
        q = queries[i : i + batch]
        sims = q.reshape(-1, q.shape[-1]) @ docs.T
        scores[i : i + batch] = np.maximum.reduceat(sims, starts, axis=1).reshape(len(q), q.shape[1], -1).sum(axis=1)
    return scores


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray]:
    return make_corpus(300, seed=0)


# --------------------------------------------------------------------------- corpus


def test_corpus_shapes_dtypes_and_norms(corpus):
    docs, doclens = corpus
    assert docs.dtype == np.float32 and doclens.dtype == np.int64
    assert docs.shape == (doclens.sum(), 128) and doclens.shape == (300,)
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)


def test_lengths_within_bounds():
    _, doclens = make_corpus(2000, 16, mean_len=40, min_len=10, max_len=60, seed=3)
    assert doclens.min() >= 10 and doclens.max() <= 60
    assert 36 <= doclens.mean() <= 44
    assert len(np.unique(doclens)) > 20  # a spread of lengths, not a constant


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError):
        make_corpus(10, mean_len=20, min_len=30)
    with pytest.raises(ValueError):
        corpus_doclens()  # neither n_docs nor n_tokens


def test_same_seed_same_corpus_other_seed_differs():
    docs, doclens = make_corpus(100, 32, seed=7)
    again, again_lens = make_corpus(100, 32, seed=7)
    np.testing.assert_array_equal(docs, again)
    np.testing.assert_array_equal(doclens, again_lens)
    other, other_lens = make_corpus(100, 32, seed=8)
    assert not np.array_equal(doclens, other_lens)
    n = min(len(docs), len(other))
    assert not np.allclose(docs[:n], other[:n])


def test_chunking_does_not_change_the_corpus():
    whole, whole_lens = make_corpus(3 * BLOCK_DOCS + 10, 32, seed=5)
    chunks = list(iter_corpus_chunks(3 * BLOCK_DOCS + 10, 32, seed=5, chunk_docs=1))
    assert len(chunks) == 4  # chunk_docs rounds up to one block
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), whole)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), whole_lens)


def test_token_target_takes_documents_until_reached():
    doclens = corpus_doclens(n_tokens=5000, seed=2)
    assert doclens.sum() >= 5000 > doclens[:-1].sum()
    rows = sum(len(d) for d, _ in iter_corpus_chunks(n_tokens=5000, dim=16, seed=2))
    assert rows == doclens.sum()


def test_tokens_lie_near_their_cluster_centres(corpus):
    docs, _ = corpus
    centres = cluster_centres(default_n_clusters(len(docs)), seed=0)
    nearest = (docs[::4] @ centres.T).max(axis=1)
    chance = (unit_vectors(1000, 128, seed=9) @ centres.T).max(axis=1)
    assert 0.7 <= np.median(nearest) <= 0.9
    assert nearest.mean() > chance.mean() + 0.35


def test_cluster_noise_is_anisotropic():
    docs, _ = make_corpus(200, 64, n_clusters=16, seed=4)
    labels = (docs @ cluster_centres(16, 64, seed=4).T).argmax(axis=1)
    members = docs[labels == np.bincount(labels).argmax()]
    residuals = members - members.mean(axis=0)
    eigenvalues = np.linalg.eigvalsh(residuals.T @ residuals)[::-1]
    assert len(members) > 500
    assert eigenvalues[:5].sum() / eigenvalues.sum() > 0.25  # isotropic noise would give ~0.1


def test_documents_stay_on_a_few_topics(corpus):
    docs, doclens = corpus
    labels = (docs @ cluster_centres(default_n_clusters(len(docs)), seed=0).T).argmax(axis=1)

    def top6_share(labels: np.ndarray) -> float:
        shares = [np.sort(np.bincount(doc))[-6:].sum() / len(doc) for doc in np.split(labels, np.cumsum(doclens)[:-1])]
        return float(np.mean(shares))

    shuffled = np.random.default_rng(0).permutation(labels)
    assert top6_share(labels) > 0.8
    assert top6_share(shuffled) < 0.5


# --------------------------------------------------------------------------- queries


def test_queries_shapes_norms_and_determinism(corpus):
    docs, doclens = corpus
    queries, targets = make_queries(docs, doclens, 20, q_len=16, seed=0)
    assert queries.shape == (20, 16, 128) and queries.dtype == np.float32
    assert targets.shape == (20,) and targets.dtype == np.int64
    assert targets.min() >= 0 and targets.max() < len(doclens)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=-1), 1.0, atol=1e-5)
    again, again_targets = make_queries(docs, doclens, 20, q_len=16, seed=0)
    np.testing.assert_array_equal(queries, again)
    np.testing.assert_array_equal(targets, again_targets)
    _, other_targets = make_queries(docs, doclens, 20, q_len=16, seed=1)
    assert not np.array_equal(targets, other_targets)


def test_target_is_usually_but_not_always_the_exact_top1(corpus):
    docs, doclens = corpus
    queries, targets = make_queries(docs, doclens, 100, seed=0)
    top1 = maxsim_scores(queries, docs, doclens).argmax(axis=1)
    hit_rate = float(np.mean(top1 == targets))
    assert 0.75 <= hit_rate < 1.0, hit_rate


def test_queries_read_a_memory_map(tmp_path, corpus):
    docs, doclens = corpus
    np.save(tmp_path / "docs.npy", docs.astype(np.float16))
    mapped = np.load(tmp_path / "docs.npy", mmap_mode="r")
    from_map = make_queries(mapped, doclens, 10, seed=3)
    in_memory = make_queries(docs.astype(np.float16), doclens, 10, seed=3)
    np.testing.assert_array_equal(from_map[0], in_memory[0])


def test_importable_without_torch():
    code = "import sys, store.testing.synthetic; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- make_bundle


def test_make_bundle_round_trip(tmp_path):
    out = tmp_path / "bundle"
    argv = [str(out), "--tokens", "20000", "--dim", "64", "--queries", "12", "--q-len", "8", "--seed", "1", "--quiet"]
    assert make_bundle.main(argv) == 0

    meta = json.loads((out / "bundle.json").read_text())
    docs = np.load(out / "docs.npy")
    doclens = np.load(out / "doclens.npy")
    ids = (out / "ids.txt").read_text().splitlines()
    queries = np.load(out / "queries.npy")
    targets = np.load(out / "query_targets.npy")
    query_ids = (out / "query_ids.txt").read_text().splitlines()

    assert docs.dtype == np.float16 and docs.shape == (doclens.sum(), 64)
    assert doclens.dtype == np.int64 and doclens.sum() >= 20000 > doclens[:-1].sum()
    assert ids[0] == "doc000000" and len(ids) == len(set(ids)) == len(doclens)
    assert queries.dtype == np.float32 and queries.shape == (12, 8, 64)
    assert targets.shape == (12,) and len(query_ids) == len(set(query_ids)) == 12
    np.testing.assert_allclose(np.linalg.norm(docs.astype(np.float32), axis=1), 1.0, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=-1), 1.0, atol=1e-5)
    assert meta["n_tokens"] == len(docs) and meta["n_docs"] == len(doclens) and meta["dtype"] == "float16"
    assert meta["params"]["seed"] == 1 and meta["params"]["target_tokens"] == 20000

    # Same rows as the in-memory generator with the same parameters.
    expected = np.concatenate([d for d, _ in iter_corpus_chunks(n_tokens=20000, dim=64, seed=1)])
    np.testing.assert_array_equal(docs, expected.astype(np.float16))


def test_make_bundle_float32(tmp_path):
    argv = [str(tmp_path), "--tokens", "3000", "--dim", "32", "--queries", "3", "--dtype", "float32", "--quiet"]
    assert make_bundle.main(argv) == 0
    assert np.load(tmp_path / "docs.npy").dtype == np.float32
