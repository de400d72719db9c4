"""Stores written by each released format version still open, verify and decode the same.

tests/data/format_v1/ holds a tiny store written by the v1 writer (dim 16, 2 bits,
K=8, three documents, one deleted) and expected.npz with what it must decode to.
If the fixture is missing (a new format version), this module writes it with the
current writer: commit it, and never edit it afterwards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lodestore import store

FIXTURES = Path(__file__).resolve().parent.parent / "data"
V1 = FIXTURES / "format_v1"
V1_PQ = FIXTURES / "format_v1_pq"  # format v1 + reader feature codec-pq (FORMAT.md 7.5)


def write_v1_fixture(path: Path) -> None:
    rng = np.random.default_rng(2026)
    docs = [rng.standard_normal((n, 16)).astype(np.float32) for n in (5, 3, 4)]
    with store.Store.create(path / "store", dim=16, nbits=2, num_centroids=8) as s:
        s.add(["alpha", "beta", "gamma"], docs)
        s.delete(["beta"])
        np.savez(path / "expected.npz", alpha=s.get("alpha"), gamma=s.get("gamma"))


def write_v1_pq_fixture(path: Path) -> None:
    """The same documents in a pq store (16 subspaces of 1 dimension, K=8)."""
    rng = np.random.default_rng(2026)
    docs = [rng.standard_normal((n, 16)).astype(np.float32) for n in (5, 3, 4)]
    with store.Store.create(path / "store", dim=16, codec="pq", pq_subspaces=16, num_centroids=8) as s:
        s.add(["alpha", "beta", "gamma"], docs)
        s.delete(["beta"])
        np.savez(path / "expected.npz", alpha=s.get("alpha"), gamma=s.get("gamma"))


@pytest.fixture(scope="module")
def v1_pq() -> Path:
    if not (V1_PQ / "store" / "manifest.json").exists():
        write_v1_pq_fixture(V1_PQ)
    return V1_PQ


def test_v1_pq_store_opens_verifies_and_decodes_the_same(v1_pq):
    expected = np.load(v1_pq / "expected.npz")
    with store.Store.open(v1_pq / "store") as s:
        assert s.manifest.format_version == 1 and s.manifest.reader_features == ("codec-pq",)
        assert s.manifest.codec.kind == "pq" and s.codec.residual_bytes == 16
        assert s.verify().ok
        assert s.ids() == ["alpha", "gamma"]
        for doc_id in ("alpha", "gamma"):
            np.testing.assert_allclose(s.get(doc_id), expected[doc_id], rtol=0, atol=2e-5)


@pytest.fixture(scope="module")
def v1() -> Path:
    if not (V1 / "store" / "manifest.json").exists():
        write_v1_fixture(V1)
    return V1


def test_v1_store_opens_verifies_and_decodes_the_same(v1):
    expected = np.load(v1 / "expected.npz")
    with store.Store.open(v1 / "store") as s:
        assert s.manifest.format_version == 1 and s.generation == 2
        report = s.verify()
        assert report.ok, str(report)
        assert s.ids() == ["alpha", "gamma"]
        for doc_id in ("alpha", "gamma"):
            np.testing.assert_allclose(s.get(doc_id), expected[doc_id], rtol=0, atol=2e-5)
        with pytest.raises(KeyError):
            s.get("beta")


def test_v1_store_is_searchable(v1):
    import lodestore

    with store.Store.open(v1 / "store") as s, lodestore.Searcher(s) as searcher:
        query = np.load(v1 / "expected.npz")["gamma"][:2]
        assert searcher.search(query, k=2)[0][0] == "gamma"
        assert lodestore.exhaustive_search(s, query, k=2)[0][0] == "gamma"
