"""Shared test set-up: hypothesis profiles, small clustered corpora, ready-made stores.

Hypothesis profile (env HYPOTHESIS_PROFILE, default "default"):
  default  the everyday run
  ci       derandomized (reproducible on every CI run), fewer examples
  nightly  many examples: the long hunt for rare failures
`deadline` is None everywhere: the test machines are shared and noisy, and a
slow example is not a failing one.

Properties whose every example trains a codec run a tenth of the profile's
max_examples (at least 3), so they scale with the profile too. Test modules get
helpers through fixtures (clustered_corpus, row_cosines, store_copy), never by
importing this file.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci", max_examples=20, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "nightly", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# faiss (k-means and nearest-centroid search in the codec) runs OpenMP threads. On a
# shared 2-core machine their spin-waiting makes a tiny training 10-40x slower than
# one thread (measured: 0.19 s vs 2-7 s for 15 small trainings); results are the
# same either way (tests/store/test_codec.py checks training across thread counts).
try:
    import faiss

    faiss.omp_set_num_threads(1)
except ImportError:  # pragma: no cover - faiss is a hard dependency of store
    pass


# --------------------------------------------------------------------------- corpora


@dataclass
class Corpus:
    """A small corpus: one unit-norm float32 (n_tokens, dim) matrix per document."""

    ids: list[str]
    docs: list[np.ndarray]

    @property
    def tokens(self) -> np.ndarray:
        return np.concatenate(self.docs)

    @property
    def doclens(self) -> np.ndarray:
        return np.array([len(d) for d in self.docs], dtype=np.int64)

    @property
    def dim(self) -> int:
        return int(self.docs[0].shape[1])

    def __len__(self) -> int:
        return len(self.docs)

    def subset(self, start: int, stop: int) -> "Corpus":
        return Corpus(self.ids[start:stop], self.docs[start:stop])


def make_small_corpus(
    n_docs: int = 40, dim: int = 32, *, seed: int = 0, n_clusters: int = 8, mean_len: int = 16,
    min_len: int = 1, max_len: int = 48, prefix: str = "doc",
) -> Corpus:
    """A clustered corpus from store.testing.synthetic (ColBERT-like token clusters)."""
    from lodestore.store.testing.synthetic import make_corpus

    tokens, doclens = make_corpus(
        n_docs, dim, n_clusters=n_clusters, mean_len=mean_len, min_len=min_len, max_len=max_len, seed=seed,
    )
    offsets = np.concatenate([[0], np.cumsum(doclens)])
    docs = [np.ascontiguousarray(tokens[offsets[i] : offsets[i + 1]], dtype=np.float32) for i in range(n_docs)]
    return Corpus([f"{prefix}{i}" for i in range(n_docs)], docs)


@pytest.fixture(scope="session")
def clustered_corpus():
    """Factory: clustered_corpus(n_docs, dim, seed=..., n_clusters=..., mean_len=..., prefix=...) -> Corpus."""
    return make_small_corpus


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, dim) matrices."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="session")
def row_cosines():
    return cosines


# --------------------------------------------------------------------------- stores

# The template store: dim 32, 2 bits, K=32, two adds (two segments), nothing deleted.
TEMPLATE_DIM, TEMPLATE_NBITS, TEMPLATE_K = 32, 2, 32


@pytest.fixture(scope="session")
def template_corpus() -> Corpus:
    return make_small_corpus(48, TEMPLATE_DIM, seed=11, n_clusters=8, mean_len=24, min_len=2, max_len=80)


@pytest.fixture(scope="session")
def template_store(tmp_path_factory, template_corpus) -> Path:
    """A committed two-segment store built once per session. Copy it (store_copy) before changing it."""
    from lodestore import store

    path = tmp_path_factory.mktemp("template") / "store"
    with store.Store.create(path, dim=TEMPLATE_DIM, nbits=TEMPLATE_NBITS, num_centroids=TEMPLATE_K, seed=3) as s:
        half = len(template_corpus) // 2
        s.add(template_corpus.ids[:half], template_corpus.docs[:half])
        s.add(template_corpus.ids[half:], template_corpus.docs[half:])
    return path


@pytest.fixture
def store_copy(template_store, tmp_path) -> Path:
    """A private copy of the template store, for tests that change or damage it."""
    dst = tmp_path / "store"
    shutil.copytree(template_store, dst)
    return dst
