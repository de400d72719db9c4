"""The sharded store in-process: routing, one shared codec, equality with one store, writes, faults."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from lodestore.engine import exhaustive_search
from lodestore.sharded import ShardError, ShardTimeoutError, ShardedSearcher, ShardedStore, shard_of
from lodestore.sharded._manifest import ROOT_MANIFEST, codec_identity
from lodestore.store import CorruptStoreError, Store, StoreError

from .conftest import DIM, K, N_SHARDS, NBITS


def test_routing_is_blake2b_of_the_id_mod_shards():
    for doc_id in ["a", "doc-17", "ünïcode", "x" * 300]:
        digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
        assert shard_of(doc_id, 7) == int.from_bytes(digest, "big") % 7
    assert shard_of("a", 1) == 0
    # golden values: the rule never changes (a different value here moves documents between shards)
    assert [shard_of(x, 4) for x in ["doc-17", "a", "b"]] == [3, 3, 1]
    assert [shard_of(x, 1000) for x in ["doc-17", "a"]] == [211, 343]


def test_every_document_is_in_its_routed_shard_and_the_codec_is_shared(sharded_template, shard_corpus):
    with ShardedStore.open(sharded_template) as s:
        assert s.n_shards == N_SHARDS and len(s) == len(shard_corpus)
        for i, shard in enumerate(s.shards):
            assert all(shard_of(d, N_SHARDS) == i for d in shard.ids())
        assert sorted(s.ids()) == sorted(shard_corpus.ids)
        identities = {codec_identity(shard.root) for shard in s.shards}
        assert identities == {s.manifest.codec["identity"]}
        assert s.verify().ok
        stats = s.stats()
        assert stats["documents"] == len(shard_corpus) and len(stats["per_shard"]) == N_SHARDS


def test_union_of_shards_is_the_single_store_document_for_document(sharded_template, single_store, shard_corpus):
    with ShardedStore.open(sharded_template) as s, Store.open(single_store) as one:
        for doc_id in shard_corpus.ids:
            np.testing.assert_array_equal(s.get(doc_id), one.get(doc_id))


def test_exhaustive_search_equals_the_single_store_bit_for_bit(sharded_template, shard_queries, truth):
    with ShardedSearcher(sharded_template) as searcher:
        got = searcher.search(list(shard_queries), k=10, exhaustive=True)
        one = searcher.search(shard_queries[0], k=10, exhaustive=True)
    assert [list(h) for h in got] == truth  # same ids, same float scores, same order
    assert list(one) == truth[0]
    assert all(not h.partial and h.missing == () for h in got)
    assert set(got[0].generations) == {"shard-000", "shard-001", "shard-002"}


def test_engine_search_scores_are_exact_maxsim(sharded_template, single_store, shard_queries, truth):
    with ShardedSearcher(sharded_template) as searcher, Store.open(single_store) as one:
        got = searcher.search(shard_queries, k=10)
        every = exhaustive_search(one, list(shard_queries), 1000, fixed_order=True)
        assert searcher.last_generations == got[0].generations
    for hits, exact, top in zip(got, every, truth):
        scores = dict(exact)
        for doc_id, score in hits:
            assert score == pytest.approx(scores[doc_id], rel=1e-6)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        assert len({d for d, _ in hits} & {d for d, _ in top}) >= 8  # candidate generation finds the best


def test_merge_breaks_ties_by_id():
    from lodestore.sharded import merge

    assert merge([[("b", 1.0), ("z", 0.5)], [("a", 1.0), ("c", 0.7)]], 3) == [("a", 1.0), ("b", 1.0), ("c", 0.7)]


def test_writes_are_routed_and_visible_after_refresh(sharded_copy, clustered_corpus, shard_queries):
    extra = clustered_corpus(12, DIM, seed=99, mean_len=12, prefix="new")
    with ShardedSearcher(sharded_copy, threads=1) as searcher, ShardedStore.open(sharded_copy, writable=True) as s:
        before = dict(searcher.generations)
        gens = s.add(extra.ids, extra.docs)
        touched = {shard_of(d, N_SHARDS) for d in extra.ids}
        assert [g > b for g, b in zip(gens, before.values())] == [i in touched for i in range(N_SHARDS)]
        q = extra.docs[0][:4]
        assert extra.ids[0] not in dict(searcher.search(q, k=5, exhaustive=True))  # not refreshed yet
        assert searcher.refresh() is True
        assert searcher.generations == dict(zip(before, gens))
        assert searcher.search(q, k=1, exhaustive=True)[0][0] == extra.ids[0]

        victim = extra.ids[1]
        s.add([victim], [extra.docs[2]], upsert=True)  # replaced, in its own shard
        s.delete([extra.ids[0]])
        searcher.refresh()
        np.testing.assert_array_equal(s.get(victim), s.shards[shard_of(victim, N_SHARDS)].get(victim))
        assert victim in dict(searcher.search(extra.docs[2][:4], k=3, exhaustive=True))
        assert extra.ids[0] not in {d for hits in searcher.search(list(shard_queries) + [q], k=50, exhaustive=True)
                                    for d, _ in hits}
        before_compact = s.generations
        after = s.compact()
        assert all(a >= b for a, b in zip(after, before_compact)) and after != before_compact
        assert all(len(shard.manifest.segments) <= 1 and not any(e.deleted for e in shard.manifest.segments)
                   for shard in s.shards)
        assert searcher.refresh() is True
        assert {d for d, _ in searcher.search(extra.docs[2][:4], k=2, exhaustive=True)} == {victim, extra.ids[2]}
        assert len(s) == 90 + 12 - 1


def test_bad_writes_change_nothing(sharded_copy, shard_corpus):
    with ShardedStore.open(sharded_copy, writable=True) as s:
        before = s.generations
        with pytest.raises(ValueError, match="already in the store"):
            s.add([shard_corpus.ids[5], "fresh"], [shard_corpus.docs[5], shard_corpus.docs[6]])
        with pytest.raises(ValueError, match="wrong dim"):
            s.add(["fresh"], [np.ones((3, DIM + 1), np.float32)])
        with pytest.raises(KeyError, match="nothing was deleted"):
            s.delete([shard_corpus.ids[0], "never-added"])
        assert s.generations == before and "fresh" not in s and shard_corpus.ids[0] in s
    with ShardedStore.open(sharded_copy) as r, pytest.raises(StoreError, match="writable=True"):
        r.delete([shard_corpus.ids[0]])


def test_bad_create_arguments_write_nothing(tmp_path):
    for kwargs in ({"n_shards": 0}, {"n_shards": 2, "locations": ["a"]}, {"n_shards": 2, "nbits": 3},
                   {"n_shards": 2, "locations": ["a", "a"]}):
        with pytest.raises(ValueError):
            ShardedStore.create(tmp_path / "r", dim=DIM, **kwargs)
        assert not (tmp_path / "r" / ROOT_MANIFEST).exists()
        assert not (tmp_path / "r" / "shards").exists() or not any((tmp_path / "r" / "shards").iterdir())


def test_a_first_add_cut_short_keeps_one_codec(tmp_path, shard_corpus):
    """A shard that adopted a codec before the root recorded it gives that codec to the rest."""
    root = tmp_path / "root"
    with ShardedStore.create(root, n_shards=2, dim=DIM, nbits=NBITS, num_centroids=K, seed=3) as s:
        early = s.shards[1].train_codec(_source(shard_corpus, 30))
        s.shards[1].adopt_codec(early)  # as if the first add stopped here
        identity = codec_identity(s.shards[1].root)
    with ShardedStore.open(root, writable=True) as s:
        assert s.manifest.codec is None
        s.add(shard_corpus.ids, shard_corpus.docs)
        assert s.manifest.codec["identity"] == identity == codec_identity(s.shards[0].root)
    assert json.loads((root / ROOT_MANIFEST).read_text())["codec"]["identity"] == identity


def _source(corpus, n):
    from lodestore.store._ingest import InMemorySource

    return InMemorySource(corpus.ids[:n], corpus.docs[:n], DIM, None)


def test_root_manifest_damage_is_reported(sharded_copy):
    path = sharded_copy / ROOT_MANIFEST
    path.write_text(path.read_text().replace('"shard-001"', '"shard-00X"', 1))
    with pytest.raises(CorruptStoreError, match="checksum"):
        ShardedStore.open(sharded_copy)
    with pytest.raises(CorruptStoreError, match="checksum"):
        ShardedSearcher(sharded_copy)


def test_corrupt_chunk_is_an_error_naming_shard_and_chunk(sharded_copy, shard_queries, corrupt_chunk):
    shard_file, chunk = corrupt_chunk(sharded_copy / "shards" / "shard-001")
    with ShardedStore.open(sharded_copy) as s:
        report = s.verify()
    assert not report.ok and len(report.failures) == 1
    assert report.failures[0].startswith("shard shard-001: ") and f"inner chunk {chunk}" in report.failures[0]
    with ShardedSearcher(sharded_copy) as searcher:
        with pytest.raises(ShardError, match=rf"shard shard-001: CorruptStoreError: .*inner chunk {chunk}") as info:
            searcher.search(shard_queries, k=10, exhaustive=True)
        assert info.value.shards == ("shard-001",) and str(shard_file) in str(info.value)


def test_allow_partial_returns_the_other_shards_marked(sharded_copy, shard_queries, truth, single_store,
                                                       corrupt_chunk):
    corrupt_chunk(sharded_copy / "shards" / "shard-001")
    with ShardedSearcher(sharded_copy) as searcher:
        got = searcher.search(shard_queries, k=10, exhaustive=True, allow_partial=True)
        assert searcher.last_missing == ("shard-001",)
    with Store.open(single_store) as one:
        every = exhaustive_search(one, list(shard_queries), 1000, fixed_order=True)
    for hits, full in zip(got, every):
        assert hits.partial and hits.missing == ("shard-001",) and set(hits.generations) == {"shard-000", "shard-002"}
        assert list(hits) == [h for h in full if shard_of(h[0], N_SHARDS) != 1][:10]


def test_a_shard_that_times_out_is_named(sharded_template, shard_queries):
    with ShardedSearcher(sharded_template, timeout_s=0.3) as searcher:
        slow = searcher._shards.readers[2]
        real = slow.search
        slow.search = lambda *a: (time.sleep(1.5), real(*a))[1]
        with pytest.raises(ShardTimeoutError, match="shard shard-002: TimeoutError") as info:
            searcher.search(shard_queries[0], k=5)
        assert info.value.shards == ("shard-002",)
        part = searcher.search(shard_queries[1], k=5, allow_partial=True)
        assert part.partial and part.missing == ("shard-002",)


def test_bad_queries_are_value_errors_not_shard_faults(sharded_template, shard_queries):
    with ShardedSearcher(sharded_template) as searcher:
        with pytest.raises(ValueError, match="k must be"):
            searcher.search(shard_queries[0], k=0)
        with pytest.raises(ValueError) as info:
            searcher.search(np.ones((3, DIM + 2), np.float32), k=3)
        assert not isinstance(info.value, ShardError)
        with pytest.raises(ValueError, match="unknown document ids"):
            searcher.search(shard_queries[0], k=3, subset=["nope"])
        sub = searcher.search(shard_queries[0], k=3, subset=["d1", "d2", "d40"])
        assert {d for d, _ in sub} <= {"d1", "d2", "d40"} and len(sub) == 3


def test_empty_shards_answer_nothing_until_refresh(tmp_path, shard_corpus, shard_queries):
    root = tmp_path / "root"
    with ShardedStore.create(root, n_shards=4, dim=DIM, nbits=NBITS, num_centroids=K) as s:
        with pytest.raises(ValueError, match="empty"):
            ShardedSearcher(root)
        only = [i for i in shard_corpus.ids if shard_of(i, 4) == 2][:20]
        s.add(only, [shard_corpus.docs[shard_corpus.ids.index(i)] for i in only])
        with ShardedSearcher(root) as searcher:
            assert {d for d, _ in searcher.search(shard_queries[0], k=50, exhaustive=True)} == set(only)
            assert {d for d, _ in searcher.search(shard_queries[0], k=5)} <= set(only)
            rest = [i for i in shard_corpus.ids if shard_of(i, 4) == 0][:5]
            s.add(rest, [shard_corpus.docs[shard_corpus.ids.index(i)] for i in rest])
            assert searcher.refresh() is True
            assert set(rest) <= {d for d, _ in searcher.search(shard_queries[0], k=50, exhaustive=True)}
            assert searcher.stats()["generations"]["shard-000"] == 2  # adopt the codec, then the add


def test_importing_lodestore_never_imports_ray():
    code = ("import sys, lodestore; lodestore.ShardedStore; lodestore.ShardedSearcher; "
            "import lodestore.sharded._cli; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fixed_order_scores_do_not_depend_on_the_block(shard_corpus, shard_queries):
    from lodestore.engine._maxsim import maxsim_concat

    docs, lens = shard_corpus.docs, shard_corpus.doclens
    whole = maxsim_concat(shard_queries[0], np.concatenate(docs), lens, fixed_order=True)
    for start, stop in [(0, 1), (5, 6), (7, 30), (44, 90)]:
        part = maxsim_concat(shard_queries[0], np.concatenate(docs[start:stop]), lens[start:stop], fixed_order=True)
        np.testing.assert_array_equal(part, whole[start:stop])


def test_a_failed_adopt_leaves_the_store_without_a_codec(tmp_path, shard_corpus):
    """FORMAT.md 12 (adopting a codec): a failure before the rename leaves generation 0 and no codec/."""
    from lodestore.store._fs import set_failpoint

    with Store.create(tmp_path / "s", dim=DIM, nbits=NBITS, num_centroids=K) as s:
        state = s.train_codec(_source(shard_corpus, 30))

        def boom():
            raise OSError("injected")

        set_failpoint("manifest.before_rename", boom)
        try:
            with pytest.raises(OSError, match="injected"):
                s.adopt_codec(state)
        finally:
            set_failpoint("manifest.before_rename", None)
        assert s.generation == 0 and s.manifest.codec is None and not (tmp_path / "s" / "codec").exists()
        assert s.adopt_codec(state) == 1 and s.codec_state().codec.num_centroids == state.codec.num_centroids
        with pytest.raises(StoreError, match="a codec is set once"):
            s.adopt_codec(state)
    with Store.create(tmp_path / "t", dim=DIM, nbits=4, num_centroids=K) as other, \
            pytest.raises(ValueError, match="does not fit"):
        other.adopt_codec(state)
