"""Sharded-store fixtures: a small corpus, a sharded store of it, and one store holding the same documents
with the same codec (the reference every sharded answer must equal)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

DIM, NBITS, K, N_SHARDS = 32, 2, 32, 3


@pytest.fixture(scope="session")
def shard_corpus(clustered_corpus):
    return clustered_corpus(90, DIM, seed=21, n_clusters=8, mean_len=20, min_len=2, max_len=60, prefix="d")


@pytest.fixture(scope="session")
def shard_queries(shard_corpus) -> np.ndarray:
    from lodestore.store.testing.synthetic import make_queries

    return make_queries(shard_corpus.tokens, shard_corpus.doclens, 6, q_len=8, seed=4)[0]


@pytest.fixture(scope="session")
def sharded_template(tmp_path_factory, shard_corpus) -> Path:
    """A 3-shard store of shard_corpus, built once (copy it with sharded_copy before changing it)."""
    from lodestore.sharded import ShardedStore

    root = tmp_path_factory.mktemp("sharded") / "root"
    with ShardedStore.create(root, n_shards=N_SHARDS, dim=DIM, nbits=NBITS, num_centroids=K, seed=3) as s:
        s.add(shard_corpus.ids, shard_corpus.docs)
    return root


@pytest.fixture(scope="session")
def single_store(tmp_path_factory, sharded_template, shard_corpus) -> Path:
    """One ordinary store of the same documents with the sharded store's codec."""
    from lodestore.sharded import ShardedStore
    from lodestore.store import Store

    path = tmp_path_factory.mktemp("single") / "store"
    with ShardedStore.open(sharded_template) as sharded, \
            Store.create(path, dim=DIM, nbits=NBITS, num_centroids=K, seed=3) as one:
        one.adopt_codec(sharded.shards[0].codec_state())
        one.add(shard_corpus.ids, shard_corpus.docs)
    return path


@pytest.fixture
def sharded_copy(sharded_template, tmp_path) -> Path:
    dst = tmp_path / "root"
    shutil.copytree(sharded_template, dst)
    return dst


@pytest.fixture(scope="session")
def truth(single_store, shard_queries):
    """Exhaustive MaxSim top-10 over the single store, per query."""
    from lodestore.engine import exhaustive_search
    from lodestore.store import Store

    with Store.open(single_store) as one:
        return exhaustive_search(one, list(shard_queries), 10, fixed_order=True)


def flip_token_chunk(shard_root: Path) -> tuple[Path, int]:
    """Flip a byte inside the first written inner chunk of the residuals of a shard's first segment.

    Returns (the shard file, the chunk number).
    """
    from lodestore.store import Store

    with Store.open(shard_root) as s:
        raw = s.segments[0].residuals
        idx = raw.shard_index(0)
        chunk = next(p for p in range(raw.chunks_per_shard) if int(idx[p, 0]) != 2**64 - 1)
        path, offset = raw.shard_file(0), int(idx[chunk, 0])
    data = bytearray(path.read_bytes())
    data[offset + 3] ^= 0x01
    path.write_bytes(bytes(data))
    return path, chunk


@pytest.fixture(scope="session")
def corrupt_chunk():
    """flip_token_chunk, for the tests that damage a shard."""
    return flip_token_chunk
