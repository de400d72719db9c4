"""Shared set-up of the server tests: two tiny stores, in-process apps, and real uvicorn servers.

Stores (built once per session, a few seconds; tests that write get a copy):
  vector store: 120 synthetic documents of dim 32 (no encoder, so text is refused);
  text index: the first 12 scifact-sample documents (60 words each) through the packaged encoder.
The helpers that run the app (in-process, or as a subprocess) are in serving.py.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from .serving import SAMPLE, TEXT_DOCS, VEC_DIM, VEC_DOCS, VectorCorpus


@pytest.fixture(scope="session")
def vec_corpus() -> VectorCorpus:
    from lodestore.store.testing.synthetic import make_corpus

    tokens, lens = make_corpus(VEC_DOCS + 8, VEC_DIM, mean_len=16, min_len=4, max_len=32, seed=5)
    offs = np.concatenate([[0], np.cumsum(lens)])
    docs = [tokens[offs[i]:offs[i + 1]] for i in range(len(lens))]
    return VectorCorpus([f"v{i:03d}" for i in range(len(lens))], docs)


@pytest.fixture(scope="session")
def vec_store_path(tmp_path_factory: pytest.TempPathFactory, vec_corpus: VectorCorpus) -> Path:
    """A committed vector store of the first VEC_DOCS documents (the last 8 are kept for adding). Copy to change it."""
    import lodestore

    path = tmp_path_factory.mktemp("vec") / "store"
    with lodestore.Store.create(path, dim=VEC_DIM, nbits=2, num_centroids=16, seed=1) as s:
        s.add(vec_corpus.ids[:VEC_DOCS], vec_corpus.docs[:VEC_DOCS])
    return path


@pytest.fixture(scope="session")
def text_index_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text index of TEXT_DOCS scifact documents with titles and metadata. Copy to change it."""
    from lodestore import Encoder, Index
    from lodestore.collection import Collection

    docs = Collection.load(SAMPLE, max_docs=TEXT_DOCS).docs
    path = tmp_path_factory.mktemp("text") / "index"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncated abstracts; a small codec
        with Index.create(path, Encoder.default(intra_op_num_threads=1), num_centroids=16) as index:
            index.add([d["_id"] for d in docs], [" ".join(d["text"].split()[:60]) for d in docs],  # short: fast to encode
                      [{"n": i, "year": 2000 + i} for i in range(len(docs))], titles=[d["title"] for d in docs])
    return path


@pytest.fixture
def vec_store(vec_store_path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "vec"
    shutil.copytree(vec_store_path, dst)
    return dst


@pytest.fixture
def text_index(text_index_path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "text"
    shutil.copytree(text_index_path, dst)
    return dst
