"""tools/bench_pooling runs end to end on tiny inputs (no figures asserted: those belong to benchmarks)."""

from __future__ import annotations

import json

import numpy as np

from tools import bench_pooling, make_bundle


def test_bench_pooling_prints_one_row_per_factor(tmp_path, capsys):
    """A cached bundle (here a synthetic one with judgements: each query's source document) is reused, not re-encoded."""
    work = tmp_path / "work"
    cached = work / "tiny" / "bundle"
    make_bundle.main([str(cached), "--tokens", "4000", "--queries", "5", "--seed", "3", "--dim", "32"])
    ids = (cached / "ids.txt").read_text().splitlines()
    qids = (cached / "query_ids.txt").read_text().splitlines()
    targets = np.load(cached / "query_targets.npy")
    (cached / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{ids[t]}\t1\n" for q, t in zip(qids, targets)))
    info = json.loads((cached / "bundle.json").read_text())
    (cached / "bundle.json").write_text(json.dumps({**info, "doc_tokens_per_s": 1000.0}))
    args = ["--data", str(tmp_path / "nowhere"), "--collections", "tiny", "--factors", "1,2", "--work", str(work),
            "--synthetic", str(cached), "--codec", "scalar", "--nbits", "2"]
    assert bench_pooling.main(args) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| tiny |")]
    assert [r[1] for r in rows] == ["1", "2"]
    tokens = [int(r[5].replace(",", "")) for r in rows]
    assert tokens[1] < tokens[0]  # pooled: fewer stored vectors
    assert all(0.0 <= float(r[2]) <= 1.0 for r in rows)  # nDCG@10
    synthetic = [line.split(" | ") for line in out.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(synthetic) == 2 and float(synthetic[0][4]) == 1.0  # the unpooled store against itself
    results = json.loads((work / "results-tiny.json").read_text())
    assert [r["factor"] for r in results["collections"]] == [1, 2] and len(results["synthetic"]) == 2
    assert bench_pooling.main(args[:8] + ["--exact"]) == 0  # no stores: exact MaxSim over the pooled vectors
    exact = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny |")]
    assert [r[1] for r in exact] == ["1", "2"] and [int(r[5].replace(",", "")) for r in exact] == tokens
    assert json.loads((work / "results-tiny-exact.json").read_text())["collections"][1]["factor"] == 2
