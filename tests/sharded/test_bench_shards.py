"""tools/bench_shards.py runs end to end on a tiny bundle (threads only: Ray has its own tests)."""

from __future__ import annotations

import json

import numpy as np


def test_bench_shards_tabulates_threads(tmp_path, shard_corpus, shard_queries, capsys):
    from tools import bench_shards

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    np.save(bundle / "docs.npy", shard_corpus.tokens)
    np.save(bundle / "doclens.npy", shard_corpus.doclens)
    np.save(bundle / "queries.npy", shard_queries)
    out = tmp_path / "rows.json"
    assert bench_shards.main([str(bundle), "--work", str(tmp_path / "w"), "--shards", "1,2", "--modes", "threads",
                              "--queries", "6", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["shards"], r["mode"]) for r in rows] == [(1, "threads"), (2, "threads")]
    assert all(r["p50_ms"] > 0 and r["qps_batch32"] > 0 and 0 <= r["recall@10"] <= 1 for r in rows)
    assert rows[0]["recall@10"] > 0.5
    table = capsys.readouterr().out
    assert "| 2 | threads |" in table
