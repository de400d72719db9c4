"""A text Index with token pooling: documents pooled, queries not; the factor kept and checked."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import lodestore
from lodestore import Encoder, Index, cli
from lodestore.collection import Collection
from lodestore.store._pooling import pooled_lengths

SAMPLE = Path(__file__).parent.parent.parent / "tools" / "data" / "scifact-sample"
N_DOCS = 10


@pytest.fixture(scope="module")
def enc() -> Encoder:
    return Encoder.default(intra_op_num_threads=2)


@pytest.fixture(scope="module")
def sample() -> Collection:
    return Collection.load(SAMPLE, max_docs=N_DOCS)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory, enc: Encoder, sample: Collection) -> Path:
    path = tmp_path_factory.mktemp("idx") / "index"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation of long abstracts; small-K codec
        with Index.create(path, enc, pool_factor=2) as index:
            index.add([d["_id"] for d in sample.docs], [d["text"] for d in sample.docs],
                      titles=[d["title"] for d in sample.docs], pool_factor=2)
    return path


def test_documents_are_pooled_and_found(pooled: Path, enc: Encoder, sample: Collection) -> None:
    texts = [f"{d['title']}. {d['text']}" for d in sample.docs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lens = [len(v) for v in enc.encode_documents(texts)]
    with Index.open(pooled, enc) as index:
        assert index.store.pool_factor == 2
        assert [len(index.store.get(d["_id"])) for d in sample.docs] == pooled_lengths(lens, 2).tolist()
        for doc in sample.docs[:4]:
            hits = index.search(doc["title"], k=3)
            assert hits[0].id == doc["_id"] and hits[0].text == doc["text"]


def test_queries_are_not_pooled(pooled: Path, enc: Encoder) -> None:
    """A text search scores the query's every token: the same as exhaustive MaxSim of the unpooled query."""
    with Index.open(pooled, enc, memory_budget="all") as index:
        query = enc.encode_queries(["vitamin D and bone density in elderly people"])[0]
        vectors = index.query_vectors(["vitamin D and bone density in elderly people"])
        np.testing.assert_array_equal(vectors[0], query[np.any(query != 0, axis=1)])
        got = index.search_vectors(vectors, k=N_DOCS)[0]
        want = lodestore.exhaustive_search(index.store, vectors[0], N_DOCS)
    assert [d for d, _ in got] == [d for d, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-4)


def test_another_factor_is_refused_before_encoding(pooled: Path, enc: Encoder, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(pooled, copy)
    with Index.open(copy, enc, writable=True) as index:
        monkeypatch.setattr(index.encoder, "encode_documents", lambda *a, **k: pytest.fail("encoded"))
        with pytest.raises(ValueError, match="pool_factor=2 .*not 3"):
            index.add(["new"], ["some text"], pool_factor=3)
        with pytest.raises(ValueError, match="pool_factor=2 .*not 1"):
            index.add_encoded(tmp_path, ["new"], ["some text"], pool_factor=1)
        assert index.store.generation == 1


def test_cli_index_pool_factor(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = str(tmp_path / "cli")
    args = ["index", path, "--collection", str(SAMPLE), "--max-docs", "6", "--quiet", "--threads", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(args + ["--pool-factor", "3"]) == 0
    with lodestore.Store.open(path) as s:
        assert s.pool_factor == 3
    capsys.readouterr()
    assert cli.main(["index", path, "--collection", str(SAMPLE), "--max-docs", "8", "--quiet",
                     "--pool-factor", "2"]) == 2
    assert "pool_factor=3" in capsys.readouterr().err
