"""Dimension reduction inside the store: fitted once, kept with the codec, applied to documents and queries."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lodestore.engine import Searcher, exhaustive_search
from lodestore.store import CorruptStoreError, Store
from lodestore.store._projection import fit_projection, project


def _docs(n: int, dim: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(6, dim))  # low-rank data: PCA to 6+ dims keeps it all
    return [(rng.normal(size=(int(rng.integers(4, 20)), 6)) @ basis).astype(np.float32) for _ in range(n)]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["pca", "random"]), st.integers(8, 40), st.integers(1, 7), st.integers(0, 2**16))
def test_projection_has_orthonormal_columns(kind: str, input_dim: int, dim: int, seed: int) -> None:
    sample = np.random.default_rng(seed).normal(size=(64, input_dim))
    m = fit_projection(kind, sample, dim, seed)
    assert m.shape == (input_dim, dim) and m.dtype == np.float32
    np.testing.assert_allclose(m.T @ m, np.eye(dim), atol=1e-5)
    np.testing.assert_array_equal(m, fit_projection(kind, sample, dim, seed))  # deterministic


def test_pca_keeps_a_low_rank_corpus_exactly() -> None:
    docs = np.concatenate(_docs(50, 32))
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    m = fit_projection("pca", docs, 6)
    y = project(docs, m)
    np.testing.assert_allclose(y @ y.T, docs @ docs.T, atol=1e-4)  # inner products preserved


def test_store_reduces_documents_and_queries(tmp_path: Path) -> None:
    docs = _docs(120, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Store.create(tmp_path / "s", dim=8, input_dim=32, reduction="pca", num_centroids=16) as store:
            store.add([f"d{i}" for i in range(120)], docs)
            with pytest.raises(ValueError, match="wrong dim 8, the store has dim 32"):
                store.add(["x"], [np.ones((3, 8), np.float32)])
    with Store.open(tmp_path / "s") as store:
        assert store.get("d0").shape == (len(docs[0]), 8)
        assert store.verify().ok
        with Searcher(store) as searcher:
            for i in (0, 50, 119):
                q = docs[i][:4]
                assert searcher.search(q, k=1)[0][0] == f"d{i}"
                assert searcher.search(q, k=5) == exhaustive_search(store, q, k=5)
            with pytest.raises(ValueError, match="expected \\(q_len, 32\\)"):
                searcher.search(np.ones((3, 8), np.float32))


def test_corrupt_projection_is_reported(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Store.create(tmp_path / "s", dim=8, input_dim=32, num_centroids=8) as store:
            store.add([f"d{i}" for i in range(20)], _docs(20, 32))
    chunk = tmp_path / "s" / "projection" / "matrix" / "c" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[3] ^= 0x01
    chunk.write_bytes(bytes(raw))
    with Store.open(tmp_path / "s") as store:
        report = store.verify()
        assert not report.ok and any("projection/matrix" in f for f in report.failures)
        with pytest.raises(CorruptStoreError, match="projection/matrix"):
            Searcher(store)


@pytest.mark.parametrize("kwargs, message", [
    ({"dim": 16, "input_dim": 8}, "input_dim must be an integer larger than dim"),
    ({"dim": 8, "input_dim": 32, "reduction": "svd"}, "unknown reduction 'svd'"),
])
def test_bad_reduction_settings(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Store.create(tmp_path / "s", **kwargs)


def test_failed_first_add_leaves_no_projection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lodestore.store._training as store_mod

    def boom(*a, **k):
        raise OSError("disk full")

    with Store.create(tmp_path / "s", dim=8, input_dim=32, num_centroids=8) as store:
        monkeypatch.setattr(store_mod, "write_codec", boom)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(OSError, match="disk full"):
                store.add([f"d{i}" for i in range(20)], _docs(20, 32))
        assert not (tmp_path / "s" / "projection").exists()
        assert store.generation == 0
