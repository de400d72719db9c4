"""The sharded store on a real local Ray cluster of two raylet nodes (ray.cluster_utils.Cluster).

Each shard is an actor placed by a custom resource on its node; equality with one store,
writes visible after refresh, an actor killed between and during queries (restarted, then
correct answers), a corrupt chunk named by shard and chunk, allow_partial. One cluster for
the module, small stores.
"""

from __future__ import annotations

import shutil
import threading

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'lodestore[ray]')")

from lodestore.sharded import ShardError, ShardedSearcher, ShardedStore, shard_of  # noqa: E402

from .conftest import DIM, K, NBITS  # noqa: E402

RESOURCES = ["node_a", "node_b"]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1},
                                                      "object_store_memory": 80 << 20})
    c.add_node(num_cpus=1, resources={"node_b": 1}, object_store_memory=80 << 20)
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def ray_root(tmp_path_factory, shard_corpus):
    """Two shards, one per node (by resource)."""
    root = tmp_path_factory.mktemp("ray") / "root"
    with ShardedStore.create(root, n_shards=2, dim=DIM, nbits=NBITS, num_centroids=K, seed=3,
                             resources=RESOURCES) as s:
        s.add(shard_corpus.ids, shard_corpus.docs)
    return root


@pytest.fixture(scope="module")
def ray_searcher(cluster, ray_root):
    with ShardedSearcher(ray_root, ray_address=cluster.address, threads=1, timeout_s=120) as searcher:
        yield searcher


def _truth(root, queries, k=10, exhaustive=True):
    with ShardedSearcher(root, threads=1) as local:
        return [list(h) for h in local.search(list(queries), k=k, exhaustive=exhaustive)]


def test_actors_are_placed_on_their_nodes(cluster, ray_searcher):
    assert ray_searcher.mode == "ray"
    nodes = {n["Resources"].get("node_a") and "node_a" or "node_b": n["NodeID"] for n in ray.nodes() if n["Alive"]}
    placed = [node for node, _ in ray_searcher._shards.where()]
    assert placed == [nodes["node_a"], nodes["node_b"]]


def test_ray_equals_in_process_and_one_store(ray_searcher, ray_root, shard_queries, single_store):
    from lodestore.engine import exhaustive_search
    from lodestore.store import Store

    with Store.open(single_store) as one:
        truth = exhaustive_search(one, list(shard_queries), 10, fixed_order=True)
    assert [list(h) for h in ray_searcher.search(list(shard_queries), k=10, exhaustive=True)] == truth
    assert [list(h) for h in ray_searcher.search(shard_queries, k=10)] == _truth(ray_root, shard_queries,
                                                                              exhaustive=False)
    assert set(ray_searcher.stats()["generations"]) == {"shard-000", "shard-001"}


def _wait_gone(pid: int, timeout_s: float = 60.0) -> None:
    """Until the local process pid has exited (the local cluster's workers run on this machine)."""
    import os
    import time

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"actor process {pid} still alive {timeout_s:.0f} s after ray.kill")


def test_a_killed_actor_is_restarted_and_answers(ray_searcher, ray_root, shard_queries):
    want = _truth(ray_root, shard_queries)
    actor = ray_searcher._shards.actors[1]
    _, pid = ray_searcher._shards.where()[1]
    ray.kill(actor, no_restart=False)  # between queries
    _wait_gone(pid)  # ray.kill returns before the process is gone: else the old actor might still answer
    assert [list(h) for h in ray_searcher.search(list(shard_queries), k=10, exhaustive=True)] == want
    assert ray_searcher._shards.where()[1][1] != pid  # a new worker process

    got: list = []
    query = threading.Thread(target=lambda: got.append(
        ray_searcher.search(list(shard_queries) * 40, k=10, exhaustive=True)))
    query.start()  # killed during the query: the call in flight is retried on the restarted actor
    ray.kill(ray_searcher._shards.actors[0], no_restart=False)
    query.join(120)
    assert got and [list(h) for h in got[0]] == want * 40


def test_writes_are_visible_after_refresh(cluster, ray_root, tmp_path, clustered_corpus):
    root = tmp_path / "root"
    shutil.copytree(ray_root, root)
    extra = clustered_corpus(6, DIM, seed=77, mean_len=10, prefix="r")
    with ShardedSearcher(root, ray_address=cluster.address, threads=1, timeout_s=120) as searcher, \
            ShardedStore.open(root, writable=True) as s:
        q = extra.docs[0][:4]
        assert searcher.search(q, k=1, exhaustive=True)[0][0] != extra.ids[0]
        gens = s.add(extra.ids, extra.docs)
        assert searcher.refresh() is True
        hits = searcher.search(q, k=1, exhaustive=True)
        assert hits[0][0] == extra.ids[0] and hits.generations == dict(zip(["shard-000", "shard-001"], gens))
        s.add([extra.ids[1]], [extra.docs[3]], upsert=True)
        s.delete([extra.ids[0]])
        s.compact()
        searcher.refresh()
        assert extra.ids[0] not in dict(searcher.search(q, k=20, exhaustive=True))
        top = searcher.search(extra.docs[3][:4], k=2, exhaustive=True)
        assert {d for d, _ in top} == {extra.ids[1], extra.ids[3]}  # the same tokens
        assert searcher.generations == dict(zip(["shard-000", "shard-001"], s.generations))


def test_corrupt_chunk_and_allow_partial_on_ray(cluster, ray_root, tmp_path, shard_queries, corrupt_chunk):
    root = tmp_path / "root"
    shutil.copytree(ray_root, root)
    _, chunk = corrupt_chunk(root / "shards" / "shard-000")
    with ShardedSearcher(root, ray_address=cluster.address, threads=1, timeout_s=120) as searcher:
        with pytest.raises(ShardError, match=rf"shard shard-000: CorruptStoreError: .*inner chunk {chunk}"):
            searcher.search(shard_queries, k=10, exhaustive=True)
        part = searcher.search(shard_queries, k=10, exhaustive=True, allow_partial=True)
    want = _truth(ray_root, shard_queries, k=1000)
    for hits, full in zip(part, want):
        assert hits.partial and hits.missing == ("shard-000",)
        assert list(hits) == [h for h in full if shard_of(h[0], 2) == 1][:10]
