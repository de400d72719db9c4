"""The build's nearest-centroid search (store/codecs/_assign.py) and the large-K k-means built on it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lodestore.store.codecs import _kmeans
from lodestore.store.codecs._assign import CellAssigner, default_cells, default_probe


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(rng: np.random.Generator, n: int, dim: int, clusters: int, noise: float = 0.3) -> np.ndarray:
    centres = _unit(rng, clusters, dim)
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 300), n=st.integers(1, 400), seed=st.integers(0, 2**16))
def test_probing_every_cell_is_the_exact_scan(k, n, seed):
    rng = np.random.default_rng(seed)
    c, x = _unit(rng, k, 16), _unit(rng, n, 16)
    a = CellAssigner(c, cells=min(8, k), probe=8)
    got = a.assign(x)
    exact = np.argmax(x @ c.T, axis=1)
    # ties aside, the same centroid: compare the scores
    np.testing.assert_allclose(np.einsum("ij,ij->i", x, c[got]), np.max(x @ c.T, axis=1), rtol=0, atol=1e-6)
    assert got.dtype == np.int64 and got.shape == (n,)
    assert np.all((got >= 0) & (got < k))
    assert np.mean(got == exact) > 0.99


def test_default_probe_is_as_accurate_as_the_faiss_ivf_it_replaces():
    """Same cells and probes as the faiss IVF builds used before: as many exact nearest centroids, no more score lost."""
    import faiss

    rng = np.random.default_rng(3)
    c = _clustered(rng, 4096, 64, 300, noise=1.0)
    x = _clustered(np.random.default_rng(4), 5000, 64, 300, noise=1.0)
    a = CellAssigner(c)
    assert (a.cells, a.probe) == (default_cells(4096), default_probe(default_cells(4096))) == (128, 8)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(64), 64, 128, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed, ivf.cp.niter, ivf.cp.min_points_per_centroid = 1234, 10, 1
    ivf.train(c)
    ivf.add(c)
    ivf.nprobe = 8
    best = np.max(x @ c.T, axis=1)
    exact = np.argmax(x @ c.T, axis=1)
    ours, theirs = a.assign(x), ivf.search(x, 1)[1][:, 0]
    lost_ours = best - np.einsum("ij,ij->i", x, c[ours])
    lost_theirs = best - np.einsum("ij,ij->i", x, c[theirs])
    assert lost_ours.min() >= -1e-6
    assert np.mean(ours == exact) >= np.mean(theirs == exact) - 0.02
    assert lost_ours.mean() <= lost_theirs.mean() + 0.002


def test_assignment_is_deterministic_and_batch_independent():
    rng = np.random.default_rng(5)
    c, x = _unit(rng, 2000, 32), _unit(rng, 3000, 32)
    whole = CellAssigner(c, seed=7).assign(x)
    again = CellAssigner(c, seed=7)
    parts = np.concatenate([again.assign(x[:1234]), again.assign(x[1234:])])
    np.testing.assert_array_equal(whole, parts)


def test_cell_kmeans_matches_faiss_objective(monkeypatch):
    """The large-K k-means reaches (nearly) the objective faiss's does on the same sample and K."""
    import faiss

    rng = np.random.default_rng(11)
    x = _clustered(rng, 20000, 32, 400)
    k = 1024
    ours = _kmeans.cell_kmeans(x, k, seed=0, iterations=4)
    km = faiss.Kmeans(32, k, niter=4, seed=0, spherical=True, verbose=False)
    km.train(x)
    theirs = km.centroids

    def objective(c):
        return float(np.max(x @ c.T, axis=1).mean())

    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert objective(ours) >= objective(theirs) - 0.01
    np.testing.assert_array_equal(ours, _kmeans.cell_kmeans(x, k, seed=0, iterations=4))


def test_train_centroids_takes_the_cell_path_at_large_k(monkeypatch):
    calls = []
    real = _kmeans.cell_kmeans

    def spy(x, k, **kw):
        calls.append(k)
        return real(x, k, **kw)

    monkeypatch.setattr(_kmeans, "CELL_KMEANS_MIN_K", 256)
    monkeypatch.setattr(_kmeans, "cell_kmeans", spy)
    x = _clustered(np.random.default_rng(2), 6000, 16, 50)
    centroids, heldout = _kmeans.train_centroids(x, num_centroids=256, seed=1)
    assert calls == [256]
    assert centroids.shape == (256, 16) and centroids.dtype == np.float16 and len(heldout) == 300


@pytest.mark.parametrize("k", [1, 2, 5])
def test_tiny_k(k):
    rng = np.random.default_rng(k)
    c, x = _unit(rng, k, 8), _unit(rng, 50, 8)
    got = CellAssigner(c).assign(x)
    np.testing.assert_array_equal(got, np.argmax(x @ c.T, axis=1))
