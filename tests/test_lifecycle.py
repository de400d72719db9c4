"""Handles, locks and file descriptors across failures and commits."""

from __future__ import annotations

import os

import numpy as np
import pytest

import lodestore
from lodestore import cli
from lodestore.store.testing.synthetic import make_corpus

DIM = 16


def _docs(n: int, seed: int):
    tokens, lens = make_corpus(n, DIM, seed=seed, mean_len=20, min_len=5, max_len=40)
    bounds = np.concatenate([[0], np.cumsum(lens)])
    return [tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "s"
    with lodestore.Store.create(path, dim=DIM, nbits=2, num_centroids=16) as s:
        s.add([f"a{i}" for i in range(40)], _docs(40, 1))
        s.delete(["a3"])
    return path


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _corrupt_bitmap(path) -> None:
    (bitmap,) = (path / "segments").glob("*.del")
    data = bytearray(bitmap.read_bytes())
    data[-1] ^= 0xFF
    bitmap.write_bytes(bytes(data))


def test_a_failed_writable_open_releases_the_writer_lock(store_path):
    _corrupt_bitmap(store_path)
    before = _open_fds()
    with pytest.raises(lodestore.CorruptStoreError, match="deletion bitmap"):
        lodestore.Store.open(store_path, writable=True)
    assert _open_fds() == before
    with pytest.raises(lodestore.CorruptStoreError):  # not StoreLockedError: the lock was released
        lodestore.Store.open(store_path, writable=True)


def test_cli_verify_reports_a_corrupt_bitmap_with_exit_1(store_path, capsys):
    _corrupt_bitmap(store_path)
    assert cli.main(["verify", str(store_path)]) == 1
    assert "deletion bitmap checksum mismatch" in capsys.readouterr().out


def test_a_searcher_keeps_working_after_its_store_commits_and_leaks_nothing(store_path):
    query = _docs(1, 9)[0][:8]
    before = _open_fds()
    store = lodestore.Store.open(store_path, writable=True)
    searcher = lodestore.Searcher(store, memory_budget=0)  # the smallest budget: index paged, rows read from the store
    first = searcher.search(query, k=5)
    store.add([f"b{i}" for i in range(10)], _docs(10, 2))  # closes the store's own segment readers
    searcher.prefetcher.clear()
    assert searcher.search(query, k=5) == first  # still the generation it opened
    searcher.close()
    store.close()
    assert _open_fds() == before


def test_a_searcher_that_fails_to_open_closes_its_store(store_path):
    shard = store_path / "segments" / "seg-000001" / "codes" / "c" / "0"
    data = bytearray(shard.read_bytes())
    data[0] ^= 0xFF
    shard.write_bytes(bytes(data))
    before = _open_fds()
    with pytest.raises(lodestore.CorruptStoreError):
        lodestore.Searcher(store_path, memory_budget="all")  # loading the codes meets the bad chunk
    assert _open_fds() == before


def test_subset_must_not_be_a_bare_string(store_path):
    with lodestore.Searcher(store_path) as s, pytest.raises(ValueError, match="not one string"):
        s.search(_docs(1, 9)[0], k=3, subset="a1")


def test_an_empty_bundle_is_a_clear_error(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    np.save(bundle / "docs.npy", np.zeros((0, DIM), np.float16))
    np.save(bundle / "doclens.npy", np.zeros(0, np.int64))
    with lodestore.Store.create(tmp_path / "s", dim=DIM) as s, pytest.raises(ValueError, match="no documents"):
        s.add_embeddings(bundle, progress=False)


def test_a_tiny_first_add_warns_that_it_fixes_k(tmp_path):
    with lodestore.Store.create(tmp_path / "s", dim=DIM, num_centroids=64) as s:
        with pytest.warns(UserWarning, match="instead of 64"):
            s.add(["x"], [np.random.default_rng(0).standard_normal((5, DIM))])
