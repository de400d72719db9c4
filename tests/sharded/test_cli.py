"""`lodestore shard create` and the store commands on a sharded root."""

from __future__ import annotations

import json

import numpy as np

from lodestore.cli import main
from lodestore.sharded import ShardedStore, shard_of

from .conftest import DIM


def _bundle(path, corpus, start, stop):
    path.mkdir()
    np.save(path / "docs.npy", np.concatenate(corpus.docs[start:stop]))
    np.save(path / "doclens.npy", corpus.doclens[start:stop])
    (path / "ids.txt").write_text("\n".join(corpus.ids[start:stop]) + "\n")
    return path


def test_shard_commands_round_trip(tmp_path, shard_corpus, shard_queries, capsys, corrupt_chunk):
    root = tmp_path / "root"
    first, second = _bundle(tmp_path / "b1", shard_corpus, 0, 60), _bundle(tmp_path / "b2", shard_corpus, 60, 90)
    assert main(["shard", "create", str(root), "--shards", "3", "--dim", str(DIM), "--nbits", "2",
                 "--centroids", "32"]) == 0
    assert "shard-002" in capsys.readouterr().out
    assert main(["build", str(root), "--embeddings", str(first), "--quiet"]) == 0
    assert main(["add", str(root), "--embeddings", str(second), "--quiet"]) == 0
    assert main(["delete", str(root), "d3"]) == 0
    assert main(["compact", str(root)]) == 0
    capsys.readouterr()
    assert main(["info", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shards"] == 3 and info["documents"] == 89 and info["deleted"] == 0
    assert main(["info", str(root)]) == 0
    assert "shard-001" in capsys.readouterr().out
    assert main(["verify", str(root)]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")

    np.save(tmp_path / "q.npy", shard_queries[:2])
    assert main(["search", str(root), "--queries", str(tmp_path / "q.npy"), "-k", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 2 and len(out[0]["hits"]) == 5 and not out[0]["partial"]
    assert set(out[0]["generations"]) == {"shard-000", "shard-001", "shard-002"}

    with ShardedStore.open(root) as s:
        assert "d3" not in s and len(s) == 89
        assert all(shard_of(i, 3) == n for n, shard in enumerate(s.shards) for i in shard.ids())
    corrupt_chunk(root / "shards" / "shard-002")
    assert main(["verify", str(root)]) == 1
    assert "shard shard-002:" in capsys.readouterr().out
    search = ["search", str(root), "--queries", str(tmp_path / "q.npy"), "--json", "--memory-budget", "all"]
    assert main(search) == 2  # memory budget "all": the shard reads every row when it opens
    assert "shard shard-002: CorruptStoreError" in capsys.readouterr().err
    assert main(search + ["--allow-partial"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["partial"] and out[0]["missing"] == ["shard-002"] and set(out[0]["generations"]) == {
        "shard-000", "shard-001"}


def test_build_with_shards_creates_a_sharded_store(tmp_path, shard_corpus, capsys):
    bundle = _bundle(tmp_path / "b", shard_corpus, 0, 40)
    assert main(["build", str(tmp_path / "root"), "--embeddings", str(bundle), "--shards", "2", "--nbits", "2",
                 "--centroids", "16", "--quiet"]) == 0
    with ShardedStore.open(tmp_path / "root") as s:
        assert s.n_shards == 2 and len(s) == 40
    assert main(["shard", "create", str(tmp_path / "root"), "--shards", "2", "--dim", str(DIM)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
