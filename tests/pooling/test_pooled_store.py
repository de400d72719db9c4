"""A store with pool_factor > 1: round trip, search, delete, compact, upsert; the factor recorded and kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lodestore
from lodestore import cli, store
from lodestore.store import CorruptStoreError, Manifest
from lodestore.store._manifest import MANIFEST_NAME
from lodestore.store._pooling import pool_document, pooled_lengths

pytestmark = pytest.mark.filterwarnings("ignore:the first add has only")

DIM, K, FACTOR = 16, 32, 2


def unit(doc: np.ndarray) -> np.ndarray:
    x = np.asarray(doc, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def stored_form(s: store.Store, doc: np.ndarray) -> np.ndarray:
    """What a pooling store must return for `doc`: the codec's reconstruction of its pooled unit rows."""
    return s.codec.decode(*s.codec.encode(pool_document(unit(doc), s.pool_factor)))


def assert_holds(s: store.Store, ids, docs) -> None:
    assert s.ids() == list(ids)
    for doc_id, doc in zip(ids, docs):
        got = s.get(doc_id)
        assert len(got) == pooled_lengths([len(doc)], s.pool_factor)[0]
        np.testing.assert_allclose(got, stored_form(s, doc), rtol=0, atol=2e-5)


@pytest.fixture
def corpus(clustered_corpus):
    return clustered_corpus(40, DIM, seed=7, n_clusters=6, mean_len=20, min_len=1, max_len=50)


@pytest.fixture
def pooled(tmp_path, corpus) -> Path:
    path = tmp_path / "pooled"
    with store.Store.create(path, dim=DIM, nbits=2, num_centroids=K, pool_factor=FACTOR) as s:
        s.add(corpus.ids[:25], corpus.docs[:25])
        s.add(corpus.ids[25:], corpus.docs[25:])
    return path


def test_the_factor_is_recorded_and_survives_reopening(pooled, corpus):
    doc = json.loads((pooled / MANIFEST_NAME).read_bytes())
    assert doc["settings"]["pool_factor"] == FACTOR and doc["writer_features"] == ["token-pooling"]
    with store.Store.open(pooled) as s:
        assert s.pool_factor == FACTOR and s.stats()["pool_factor"] == FACTOR
        assert s.manifest.tokens == int(pooled_lengths(corpus.doclens, FACTOR).sum()) < int(corpus.doclens.sum())
        assert_holds(s, corpus.ids, corpus.docs)
        assert s.verify().ok


def test_an_unpooled_store_writes_its_manifest_as_before(tmp_path, corpus):
    with store.Store.create(tmp_path / "s", dim=DIM, nbits=2, num_centroids=K) as s:
        s.add(corpus.ids, corpus.docs)
        assert s.pool_factor == 1 and s.stats()["pool_factor"] == 1
        assert s.manifest.tokens == int(corpus.doclens.sum())
    doc = json.loads((tmp_path / "s" / MANIFEST_NAME).read_bytes())
    assert "pool_factor" not in doc["settings"] and doc["writer_features"] == []


def test_an_embedding_bundle_is_pooled_like_an_in_memory_add(tmp_path, pooled, corpus):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    np.save(bundle / "docs.npy", np.concatenate(corpus.docs).astype(np.float32))
    np.save(bundle / "doclens.npy", corpus.doclens)
    (bundle / "ids.txt").write_text("".join(i + "\n" for i in corpus.ids))
    with store.Store.create(tmp_path / "b", dim=DIM, nbits=2, num_centroids=K, pool_factor=FACTOR) as s:
        s.add_embeddings(bundle, progress=False, pool_factor=FACTOR)
        assert_holds(s, corpus.ids, corpus.docs)


def test_a_pooled_store_is_searched(pooled, corpus):
    with store.Store.open(pooled) as s, lodestore.Searcher(s, memory_budget="all") as searcher:
        queries = [corpus.docs[i][:6] for i in (0, 13, 31)]
        hits = searcher.search(queries, k=5)
        exact = [lodestore.exhaustive_search(s, q, 5) for q in queries]
    for i, got, want in zip((0, 13, 31), hits, exact):
        assert got[0][0] == corpus.ids[i], "a document's own tokens find it first"
        assert [d for d, _ in got] == [d for d, _ in want]


def test_delete_compact_and_upsert_keep_pooling(pooled, corpus, clustered_corpus):
    fresh = clustered_corpus(3, DIM, seed=8, n_clusters=6, mean_len=30, min_len=10, max_len=40)
    with store.Store.open(pooled, writable=True) as s:
        s.delete(corpus.ids[:5])
        s.add(corpus.ids[10:13], fresh.docs, upsert=True)
        before = {i: s.get(i) for i in s.ids()}
        s.compact()
        assert len(s.segments) == 1 and s.pool_factor == FACTOR
        after = {i: s.get(i) for i in s.ids()}
        assert list(before) == list(after)
        for i in before:
            np.testing.assert_array_equal(before[i], after[i])
        ids = corpus.ids[5:10] + corpus.ids[13:] + corpus.ids[10:13]
        assert_holds(s, ids, corpus.docs[5:10] + corpus.docs[13:] + fresh.docs)
    with store.Store.open(pooled) as s:
        assert s.pool_factor == FACTOR and s.verify().ok


@pytest.mark.parametrize("created, asked", [(2, 3), (2, 1), (1, 2)])
def test_an_add_with_another_factor_is_refused_and_writes_nothing(tmp_path, corpus, created, asked):
    path = tmp_path / "s"
    with store.Store.create(path, dim=DIM, nbits=2, num_centroids=K, pool_factor=created) as s:
        s.add(corpus.ids[:20], corpus.docs[:20])
    manifest = (path / MANIFEST_NAME).read_bytes()
    with store.Store.open(path, writable=True) as s:
        with pytest.raises(ValueError, match=f"pool_factor={created} .*not {asked}"):
            s.add(corpus.ids[20:], corpus.docs[20:], pool_factor=asked)
        with pytest.raises(ValueError, match=f"pool_factor={created}"):
            s.add_embeddings(tmp_path / "nowhere", pool_factor=asked)
        s.add(corpus.ids[20:22], corpus.docs[20:22], pool_factor=created)  # its own factor: accepted
    assert (path / MANIFEST_NAME).read_bytes() != manifest
    with store.Store.open(path) as s:
        assert s.generation == 2 and s.pool_factor == created


@pytest.mark.parametrize("bad", [0, -2, 2.0, "2"])
def test_create_refuses_a_bad_factor_and_makes_nothing(tmp_path, bad):
    with pytest.raises(ValueError, match="pool_factor must be an integer"):
        store.Store.create(tmp_path / "s", dim=DIM, pool_factor=bad)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("edit", [
    lambda m: Manifest(**{**m.__dict__, "settings": {**m.settings, "pool_factor": 1}}),
    lambda m: Manifest(**{**m.__dict__, "settings": {**m.settings, "pool_factor": "2"}}),
    lambda m: Manifest(**{**m.__dict__, "writer_features": ()}),
    lambda m: Manifest(**{**m.__dict__, "settings": {k: v for k, v in m.settings.items() if k != "pool_factor"}}),
])
def test_a_manifest_whose_pooling_fields_disagree_is_corrupt(pooled, edit):
    m = Manifest.from_bytes((pooled / MANIFEST_NAME).read_bytes())
    (pooled / MANIFEST_NAME).write_bytes(edit(m).to_bytes())  # a valid checksum over the bad fields
    with pytest.raises(CorruptStoreError, match="token pooling"):
        store.Store.open(pooled)


def test_cli_build_records_the_factor_and_refuses_another(tmp_path, corpus, capsys):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    np.save(bundle / "docs.npy", np.concatenate(corpus.docs).astype(np.float32))
    np.save(bundle / "doclens.npy", corpus.doclens)
    path = str(tmp_path / "s")
    assert cli.main(["build", path, "--embeddings", str(bundle), "--pool-factor", "3", "--nbits", "2",
                     "--centroids", str(K), "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["info", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pool_factor"] == 3 and info["tokens"] == int(pooled_lengths(corpus.doclens, 3).sum())
    assert cli.main(["info", path]) == 0 and "token pooling" in capsys.readouterr().out
    assert cli.main(["build", path, "--embeddings", str(bundle), "--pool-factor", "2", "--quiet"]) == 2
    assert "pool_factor=3" in capsys.readouterr().err
    assert cli.main(["build", str(tmp_path / "t"), "--embeddings", str(bundle), "--pool-factor", "0"]) == 2
    assert "pool_factor must be" in capsys.readouterr().err and not (tmp_path / "t").exists()
