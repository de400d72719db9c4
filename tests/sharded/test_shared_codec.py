"""Stores holding one codec share its resident copy in a process: one codec object and one set of int8
query-centroid tables for all of a sharded store's in-process shards (store/codecs/_shared.py,
engine/_corpus.py), and a store of another codec gets its own. Answers are unchanged (test_sharded.py)."""

from __future__ import annotations

import gc

import numpy as np

from lodestore.engine import Searcher
from lodestore.sharded import ShardedStore
from lodestore.store import Store


def test_in_process_shards_share_one_codec_and_int8_tables(sharded_template, single_store):
    with ShardedStore.open(sharded_template) as s:
        paths = [shard.root for shard in s.shards]
    searchers = [Searcher(p) for p in paths]
    try:
        assert len({id(x.corpus.codec) for x in searchers}) == 1
        assert len({id(x.corpus.centroids_i8) for x in searchers}) == 1
        # the single store adopted the same codec state: the same content, so the same object too
        with Searcher(single_store) as one:
            assert one.corpus.codec is searchers[0].corpus.codec
            assert one.corpus.centroids_i8 is searchers[0].corpus.centroids_i8
    finally:
        for x in searchers:
            x.close()


def test_a_store_of_another_codec_gets_its_own(sharded_template, tmp_path, shard_corpus):
    other = tmp_path / "other"
    with Store.create(other, dim=shard_corpus.docs[0].shape[1], nbits=2, num_centroids=32, seed=99) as st:
        st.add(shard_corpus.ids, shard_corpus.docs)
    with ShardedStore.open(sharded_template) as s:
        path = s.shards[0].root
    with Searcher(path) as a, Searcher(other) as b:
        assert a.corpus.codec is not b.corpus.codec
        assert not np.array_equal(a.corpus.codec.centroids, b.corpus.codec.centroids)


def test_the_shared_tables_are_freed_with_the_last_store(sharded_template):
    import lodestore.engine._corpus as corpus

    with ShardedStore.open(sharded_template) as s:
        path = s.shards[0].root
    gc.collect()
    before = len(corpus._INT8)
    searcher = Searcher(path)
    assert len(corpus._INT8) in (before, before + 1)  # + 1 unless another live store holds the codec
    searcher.close()
    del searcher
    gc.collect()
    assert len(corpus._INT8) == before



def test_the_shared_codec_cannot_be_written_in_place():
    """A codec shared by stores is read-only: writing its centroids would change every store holding it."""
    import dataclasses

    import numpy as np
    import pytest

    from lodestore.store.codecs._shared import one_copy
    from lodestore.store.codecs.scalar import ScalarCodec

    rng = np.random.default_rng(9)
    cents = rng.standard_normal((8, 16)).astype(np.float32)
    codec = one_copy(ScalarCodec(cents, np.array([0.0], np.float32), np.array([-0.1, 0.1], np.float32), 1))
    with pytest.raises(ValueError, match="read-only"):
        codec.centroids[0, 0] = 1.0
    assert all(not getattr(codec, f.name).flags.writeable for f in dataclasses.fields(codec)
               if isinstance(getattr(codec, f.name), np.ndarray))
