"""The tools run end to end on tiny inputs (no figures asserted: those belong to benchmarks)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lodestore
from lodestore import cli
from tools import bench_search, demo, ground_truth, make_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "bundle"
    make_bundle.main([str(path), "--tokens", "6000", "--queries", "6", "--seed", "3", "--dim", "32"])
    return path


@pytest.fixture(scope="module")
def built(bundle, tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "store"
    assert cli.main(["build", str(path), "--embeddings", str(bundle), "--centroids", "64", "--quiet"]) == 0
    return path


def test_ground_truth_matches_brute_force(bundle):
    top = ground_truth.exact_topk(bundle, k=5, progress=False)
    docs = np.load(bundle / "docs.npy").astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    lens = np.load(bundle / "doclens.npy")
    queries = np.load(bundle / "queries.npy")
    bounds = np.concatenate([[0], np.cumsum(lens)])
    for qi, q in enumerate(queries):
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        scores = np.array([(docs[a:b] @ q.T).max(axis=0).sum() for a, b in zip(bounds[:-1], bounds[1:])])
        np.testing.assert_allclose(scores[top[qi]], np.sort(scores)[::-1][:5], rtol=1e-5)


def test_bench_search_runs(bundle, built, capsys):
    out = built.parent / "rows.json"
    assert bench_search.main([str(bundle), str(built), "--queries", "6", "--budgets", "all,1",
                              "--batch", "3", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["placement"] for r in rows] == ["all-in-RAM", "index-paged"]  # 1 byte: the smallest placement
    assert all(0.0 <= r["recall"] <= 1.0 and r["p50_ms"] > 0 for r in rows)
    assert "| budget |" in capsys.readouterr().out


def test_bench_search_under_a_memory_limit(bundle, built, capsys):
    from tools.memlimit import unavailable

    why = unavailable("memory")
    if why:
        pytest.skip(f"no memory cgroup here: {why}")
    out = built.parent / "limited.json"
    assert bench_search.main([str(bundle), str(built), "--queries", "6", "--budgets", "1",
                              "--memory-limit", "cache=2,cache=0.25", "--hints", "both", "--batch", "3",
                              "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["memory_limit"], r["hints"]) for r in rows] == [
        ("cache=2", False), ("cache=2", True), ("cache=0.25", False), ("cache=0.25", True)]
    reference = rows[0]["recall"]
    assert all(r["recall"] == reference for r in rows)  # the limit changes where rows come from, not answers
    assert all(r["cgroup"]["limit"] > 0 and r["row_bytes_per_query"] > 0 for r in rows)
    assert rows[1]["hinted_per_query"] > 0 and rows[0]["hinted_per_query"] == 0
    assert "whole-store-cached row" in capsys.readouterr().out


def test_cli_info_verify_search(bundle, built, capsys):
    assert cli.main(["info", str(built)]) == 0
    assert "bytes / token" in capsys.readouterr().out
    assert cli.main(["verify", str(built)]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli.main(["search", str(built), "--queries", str(bundle / "queries.npy"), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 6 and all(len(h) == 3 for h in hits)
    with lodestore.Store.open(built) as store:
        exact = lodestore.exhaustive_search(store, np.load(bundle / "queries.npy")[0], k=1)
    assert hits[0][0]["id"] == exact[0][0]


def test_cli_errors_are_clear(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "nope")]) == 2
    assert "no such store" in capsys.readouterr().err


def test_demo_runs(tmp_path, capsys):
    assert demo.main(["--dir", str(tmp_path / "demo"), "--tokens", "5000", "--text-docs", "40"]) == 0
    out = capsys.readouterr().out
    assert "recall@10 against exhaustive MaxSim" in out and "OK" in out
    assert "lodestore query" in out and "nDCG@10" in out and "exhaustive MaxSim over the same store" in out


def test_cli_verify_exits_1_naming_the_corrupt_chunk(built, tmp_path, capsys):
    import shutil

    copy = tmp_path / "corrupt"
    shutil.copytree(built, copy)
    shard = copy / "segments" / "seg-000001" / "residuals" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF  # inside inner chunk 0's payload
    shard.write_bytes(bytes(data))
    assert cli.main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "residuals/c/0/0" in out and "inner chunk 0" in out and "CORRUPT" in out


def test_encode_collection_writes_a_bundle_the_store_builds_from(tmp_path):
    from tools import encode_collection

    coll = tmp_path / "coll"
    (coll / "qrels").mkdir(parents=True)
    docs = [{"_id": "d1", "title": "Boundary layers", "text": "Heat transfer in a laminar boundary layer."},
            {"_id": "d2", "title": "", "text": "Supersonic flow over a wedge."},
            {"_id": "d3", "title": "Empty", "text": ""}]
    (coll / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (coll / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "laminar heat transfer"}) + "\n"
                                        + json.dumps({"_id": "q2", "text": "unjudged"}) + "\n")
    (coll / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    out = tmp_path / "bundle"
    assert encode_collection.main([str(coll), str(out), "--threads", "1"]) == 0
    assert (out / "ids.txt").read_text().split() == ["d1", "d2", "d3"]  # "Empty" still has a title
    assert (out / "query_ids.txt").read_text().split() == ["q1"]  # only judged queries
    lens = np.load(out / "doclens.npy")
    assert np.load(out / "docs.npy").shape == (lens.sum(), 384)
    assert np.load(out / "queries.npy").shape == (1, 32, 384)
    with lodestore.Store.create(tmp_path / "s", dim=384, num_centroids=8) as s:
        s.add_embeddings(out, progress=False)
        hits = lodestore.exhaustive_search(s, np.load(out / "queries.npy")[0], k=3)
    assert hits[0][0] == "d1"


def test_cli_add_and_delete(bundle, tmp_path, capsys):
    import shutil

    path = tmp_path / "s"
    assert cli.main(["build", str(path), "--embeddings", str(bundle), "--centroids", "32", "--quiet"]) == 0
    extra = tmp_path / "extra"
    extra.mkdir()
    rng = np.random.default_rng(3)
    for name in ("x1", "x2"):
        np.save(extra / f"{name}.npy", rng.standard_normal((7, 32)).astype(np.float32))
    assert cli.main(["add", str(path), "--embeddings", str(extra), "--quiet"]) == 0
    assert cli.main(["delete", str(path), "x1", "doc000000"]) == 0
    assert cli.main(["delete", str(path), "nope"]) == 2
    assert "unknown document ids" in capsys.readouterr().err
    with lodestore.Store.open(path) as s:
        assert "x2" in s and "x1" not in s and "doc000000" not in s
        assert s.generation == 3 and s.verify().ok
    shutil.rmtree(extra)


def test_sweep_search_prints_one_row_per_setting(bundle, built, capsys):
    from tools import sweep_search

    assert sweep_search.main([str(bundle), str(built), "--grid", "2x16,4x32,2x16d0.1", "--queries", "4"]) == 0
    out = capsys.readouterr().out
    assert "| 2 | - | 16 | 16 |" in out and "| 4 | - | 32 | 32 |" in out and "| 2 | 0.1 | 16 | 16 |" in out


def test_bench_dims_runs(tmp_path, capsys):
    from pathlib import Path

    from tools import bench_dims, encode_collection

    sample = Path(__file__).parent.parent / "tools" / "data" / "scifact-sample"
    out = tmp_path / "bundle"
    assert encode_collection.main([str(sample), str(out), "--max-docs", "40", "--threads", "2"]) == 0
    capsys.readouterr()
    assert bench_dims.main([str(out), "--dims", "16", "--sample", "2000"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    rows = table[1:]  # after the header (the |---| line does not start with "| ")
    assert [row.split(" | ")[0] for row in rows] == ["| none", "| pca-16", "| random-16"]
    none, pca = rows[0].split(" | "), rows[1].split(" | ")
    assert (none[1], pca[1]) == ("384", "16")
    assert float(pca[3]) < float(none[3]) / 4  # token bytes shrink with the dimension
    for row in rows:
        assert 0.0 <= float(row.split(" | ")[5]) <= 1.0  # nDCG@10 engine


def test_bench_encoder_prints_one_row_per_setting(capsys):
    from tools import bench_encoder

    assert bench_encoder.main(["--docs", "6", "--batches", "2,4", "--threads", "1", "--queries", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |")]
    assert [r.split(" | ")[1] for r in rows] == ["2", "4"]
    assert float(rows[0].split(" | ")[3]) == 1.0  # the first row is the baseline
def test_bench_updates_runs(bundle, tmp_path, capsys):
    from tools import bench_updates

    assert bench_updates.main([str(bundle), str(tmp_path / "w"), "--queries", "4", "--foreign-docs", "5",
                               "--centroids", "64"]) == 0
    out = capsys.readouterr().out
    assert "| foreign (random Gaussian) |" in out and "| compact |" in out
    assert "4/4 queries with the same ids" in out  # compaction changes no answer


def test_bench_payloads_compares_store_and_sqlite(tmp_path, capsys):
    import warnings

    from tools import bench_payloads

    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with lodestore.Store.create(tmp_path / "s", dim=8, num_centroids=4) as s:
            s.add([f"d{i}" for i in range(30)], [rng.normal(size=(3, 8)) for _ in range(30)],
                  payloads=[(f"document {i} " * 50).encode() for i in range(30)])
    assert bench_payloads.main([str(tmp_path / "s"), "--lookups", "5", "--k", "3"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "MB" in line]
    assert [r.split(" | ")[0] for r in rows] == ["| store payload arrays (gzip, CRC32C)", "| SQLite table (no checksums)"]
    assert float(rows[0].split(" | ")[2]) < 1.0  # repetitive text compresses


def test_bench_payloads_builds_from_a_collection(capsys):
    from pathlib import Path

    from tools import bench_payloads

    sample = Path(__file__).parent.parent / "tools" / "data" / "scifact-sample"
    assert bench_payloads.main(["--collection", str(sample), "--lookups", "3", "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "300 documents" in out and "| store payload arrays" in out
    with pytest.raises(SystemExit):
        bench_payloads.main([])  # neither a store nor a collection
def test_bench_codec_runs(bundle, tmp_path, capsys):
    from tools import bench_codec

    assert bench_codec.main([str(bundle), "--queries", "4", "--codecs", "s2,pq16", "--num-centroids", "32",
                             "--work", str(tmp_path), "--e2e"]) == 0
    out = capsys.readouterr().out
    assert "| 2-bit scalar | 8 |" in out and "| PQ 16 x 256 | 16 |" in out and "pq default" in out


def test_cli_builds_a_pq_store(bundle, tmp_path):
    path = tmp_path / "pq"
    assert cli.main(["build", str(path), "--embeddings", str(bundle), "--centroids", "32", "--codec", "pq",
                     "--pq-subspaces", "16", "--quiet"]) == 0
    with lodestore.Store.open(path) as store:
        assert store.manifest.codec.kind == "pq" and store.codec.residual_bytes == 16
def test_bench_peers_lodestore_and_brute_force_rows(tmp_path, capsys):
    """The peer benchmark at a tiny size in the project venv: lodestore and brute force measured,
    the peers (not installed here) reported as such, and the run still succeeds."""
    import importlib.util

    from tools import bench_peers

    b = tmp_path / "bundle"
    make_bundle.main([str(b), "--tokens", "3000", "--queries", "6", "--seed", "5", "--dim", "32", "--quiet"])
    ground_truth.load_or_compute(b, 10)
    np.save(b / "truth_k100.npy", np.load(b / "truth_k10.npy"))
    out = tmp_path / "rows.json"
    rows_arg = "lodestore,brute,plaid_k10,voyager,lance_flat,fast_plaid"
    assert bench_peers.main([str(b), "--work", str(tmp_path / "w"), "--rows", rows_arg, "--queries", "6",
                             "--batch", "3", "--out", str(out)]) == 0
    rows = {r["row"]: r for r in json.loads(out.read_text())}
    for name in ("lodestore", "brute"):
        r = rows[name]
        assert "error" not in r and r["p50_ms"] > 0 and r["rss_mb"] > 0 and r["build"]["peak_rss_mb"] > 0
        assert r["build"]["disk_bytes"] > 0 and r["batch_ms"] is not None
    assert rows["brute"]["recall_raw"] == 1.0  # exact MaxSim over the raw vectors is the truth itself
    assert 0.0 <= rows["lodestore"]["recall_raw"] <= 1.0 and 0.0 <= rows["lodestore"]["recall_store"] <= 1.0
    if importlib.util.find_spec("pylate") is None:
        for name in ("plaid_k10", "voyager"):
            assert rows[name]["error"].startswith("not installed") and "p50_ms" not in rows[name]
    if importlib.util.find_spec("lancedb") is None:
        assert rows["lance_flat"]["error"].startswith("not installed")
    if importlib.util.find_spec("fast_plaid") is None:
        assert rows["fast_plaid"]["error"].startswith("not run")
    assert "| brute-force MaxSim" in capsys.readouterr().out


def test_bench_scale_reuses_a_store_and_tabulates(bundle, built, tmp_path, capsys):
    from tools import bench_scale

    out = tmp_path / "scale.json"
    assert bench_scale.main(["--work", str(tmp_path / "w"), "--point", f"tiny={bundle}:{built}", "--queries", "4",
                             "--batch", "2", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["build"]["reused"] and row["p50_ms"] > 0 and row["recall_store"] is not None
    assert "| 6,0" in capsys.readouterr().out  # the token count of the point
    assert built.is_dir() and not (built / "store.truth.json").exists()  # the reused store is untouched


def test_profile_stages_accounts_for_the_query_time(bundle, built, capsys):
    import subprocess
    import sys

    # a child process: the tool wraps engine functions in place, which must not leak into other tests
    out = subprocess.run([sys.executable, "-m", "tools.profile_stages", str(built), str(bundle), "--queries", "4"],
                         capture_output=True, text=True, check=True).stdout
    assert "| 4-5 residual interaction, then exact MaxSim over its best |" in out and "ms/q mean" in out


def test_probe_misses_accounts_for_every_reference_document(bundle, built, capsys):
    import re

    from tools import probe_misses

    assert probe_misses.main([str(bundle), str(built), "--queries", "6", "--deltas", "0.1"]) == 0
    out = capsys.readouterr().out
    found, unprobed, cut = map(int, re.search(r"found (\d+), missed (\d+) never probed and (\d+) probed", out).groups())
    assert found + unprobed + cut == 60
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| fixed") or line.startswith("| within")]
    assert len(rows) == 4
    coverage = [float(r[1]) for r in rows[:3]]
    assert coverage == sorted(coverage)  # probing more lists never covers less


def test_ab_search_compares_thread_counts(bundle, built, capsys):
    from tools import ab_search

    assert ab_search.main([str(built), str(bundle), "--threads", "1,2", "--queries", "4", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| /")]
    assert len(rows) == 2 and "| 1 |" in rows[0] and "| 2 |" in rows[1] and "x1.00" in rows[0]
    assert rows[0].split("|")[6] == rows[1].split("|")[6]  # same top-10 ids whatever the thread count


def test_ab_search_children_import_the_engine_and_store_of_their_checkout(tmp_path):
    """The editable install maps lodestore.engine and lodestore.store to the installed checkout whatever
    sys.path says: ab_search's children find all three packages in the checkout they were given."""
    from tools import ab_search

    for part in ("lodestore", "engine", "store"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "__init__.py").write_text("")
    finder = ab_search._Checkout(str(tmp_path))
    for name, part in (("lodestore", "lodestore"), ("lodestore.engine", "engine"), ("lodestore.store", "store")):
        spec = finder.find_spec(name, None)
        assert spec.origin == str(tmp_path / part / "__init__.py")
        assert spec.submodule_search_locations == [str(tmp_path / part)]
    assert finder.find_spec("lodestore.hybrid", None) is None  # the rest comes from lodestore/ as usual
    (tmp_path / "store" / "__init__.py").unlink()
    assert finder.find_spec("lodestore.store", None) is None  # a checkout without it: the usual import


def test_bench_peers_ratios_without_raw_ground_truth():
    """A bundle without truth_k100.npy has no raw recall: the ratio line says so instead of crashing."""
    from tools import bench_peers

    build = {"build_s": 10.0, "peak_rss_mb": 100.0, "disk_bytes": 1000}
    rows = [
        {"row": "plaid_k10", "engine": "plaid", "cold": False, "p50_ms": 10.0, "rss_mb": 500.0, "build": build,
         "recall_raw": None, "label": "PLAID"},
        {"row": "lodestore", "engine": "lodestore", "cold": False, "p50_ms": 8.0, "rss_mb": 50.0,
         "build": dict(build, build_s=2.0), "recall_raw": None, "label": "lodestore"},
    ]
    line = bench_peers.ratios(rows)
    assert "p50 x0.80" in line and "build s x0.200" in line and "R@10 raw - (>= +0.03)" in line


def test_memstat_warm_and_evict_follow_symlinked_stores(tmp_path):
    """bench_scale links a reused store into its work directory: warming and evicting must reach its files."""
    from tools import memstat

    real = tmp_path / "real"
    (real / "seg").mkdir(parents=True)
    (real / "seg" / "chunk").write_bytes(b"x" * 5000)
    work = tmp_path / "work"
    work.mkdir()
    (work / "store").symlink_to(real)
    assert memstat.warm([work]) == 5000
    assert memstat.evict([work]) == 1


def test_streamed_corpus_equals_the_generator_in_any_slices():
    from lodestore.store.testing.streamed import SyntheticCorpus, SyntheticSource
    from lodestore.store.testing.synthetic import iter_corpus_chunks

    corpus = SyntheticCorpus(n_tokens=30_000, dim=16, seed=4)
    whole = np.concatenate([x for x, _ in iter_corpus_chunks(n_tokens=30_000, dim=16, seed=4)])
    assert corpus.total_tokens == len(whole)
    got = np.concatenate([t for _, _, t in corpus.chunks(7, 301, chunk_docs=256)])
    np.testing.assert_array_equal(got, whole[corpus.offsets[7] : corpus.offsets[301]])
    rows = np.array([0, 9_999, 12, len(whole) - 1])
    np.testing.assert_array_equal(corpus.rows(rows), whole[rows])
    source = SyntheticSource(corpus, 10, 40)
    batches = list(source.batches())
    assert [i for b in batches for i in b[0]] == source.ids() == [f"doc{i:09d}" for i in range(10, 40)]
    assert sum(len(b[2]) for b in batches) == source.n_tokens
    sample = source.sample(500, seed=1)
    assert sample.shape == (500, 16)
    inside = {r.tobytes() for r in whole[corpus.offsets[10] : corpus.offsets[40]]}
    assert all(r.tobytes() in inside for r in sample)  # drawn from the slice only
    with pytest.raises(ValueError, match="no documents"):
        SyntheticSource(corpus, 40, 40)


def test_synthetic_store_builds_in_commits_resumes_and_has_ground_truth(tmp_path, capsys):
    from tools import synthetic_store

    out = tmp_path / "syn"
    args = ["build", str(out), "--tokens", "6000", "--dim", "16", "--queries", "4", "--segment-tokens", "2500",
            "--centroids", "32", "--quiet"]
    assert synthetic_store.main(args) == 0
    with lodestore.Store.open(out / "store") as store:
        segments, n = len(store.manifest.segments), len(store)
        tokens = [e.tokens for e in store.manifest.segments]
    assert segments == 3
    log = [json.loads(line) for line in (out / "build.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in log] == [1, 2, 3] and [r["tokens"] for r in log] == tokens
    assert all(r["seconds"] >= 0 and r["peak_rss_mb"] > 0 for r in log)
    assert synthetic_store.main(args) == 0  # run again: nothing left to add, nothing added
    with lodestore.Store.open(out / "store") as store:
        assert (len(store.manifest.segments), len(store)) == (segments, n)
    assert synthetic_store.main(["truth", str(out), "-k", "5"]) == 0
    top = np.load(out / "truth_k5.npy")
    assert top.shape == (4, 5)
    targets = np.load(out / "query_targets.npy")
    assert np.mean([t in row for t, row in zip(targets, top)]) >= 0.5  # queries aim at their targets
    # computed a range at a time (kept under truth_parts/, resumed), it is the one-pass truth
    from tools.ground_truth import exact_topk_stream

    corpus = synthetic_store._corpus(out)
    whole = exact_topk_stream(np.load(out / "queries.npy"), corpus.chunks(), corpus.n_docs, corpus.total_tokens, 5,
                              progress=False)
    assert synthetic_store.main(["truth", str(out), "-k", "5", "--range-tokens", "1000"]) == 0
    parts = sorted((out / "truth_parts").glob("raw_*_k5_*.npz"))
    assert len(parts) >= 5 and np.array_equal(np.load(out / "truth_k5.npy"), whole)
    parts[2].unlink()
    assert synthetic_store.main(["truth", str(out), "-k", "5", "--range-tokens", "1000"]) == 0
    assert parts[2].exists() and np.array_equal(np.load(out / "truth_k5.npy"), whole)
    # the exhaustive search over the store, segment by segment, is lodestore.exhaustive_search's
    assert synthetic_store.main(["store-truth", str(out), "-k", "5"]) == 0
    assert len(list((out / "truth_parts").glob("store_*_k5_*.npz"))) == segments
    queries = np.load(out / "queries.npy")
    with lodestore.Store.open(out / "store") as store:
        expected = [[h[0] for h in hits] for hits in lodestore.exhaustive_search(store, queries, 5)]
    assert json.loads((out / "store.truth.json").read_text())["ids"] == expected
    assert bench_search.truth(out / "store", queries, 5) == expected  # bench_search takes it as its own
    # a commit while it computes: the truth is kept under the generation it was computed from
    from tools import ground_truth

    real = ground_truth.cached_range

    def commit_meanwhile(path, compute):
        if not getattr(commit_meanwhile, "done", False):
            commit_meanwhile.done = True
            with lodestore.Store.open(out / "store", writable=True) as w:
                w.add(["late"], [np.ones((3, 16), np.float32)])
        return real(path, compute)

    (out / "store.truth.json").unlink()
    ground_truth.cached_range = commit_meanwhile
    try:
        assert synthetic_store.main(["store-truth", str(out), "-k", "5"]) == 0
    finally:
        ground_truth.cached_range = real
    key = json.loads((out / "store.truth.json").read_text())["key"]
    assert key["manifest"] != bench_search.manifest_checksum(out / "store")  # not the newer generation's
    with pytest.raises(SystemExit, match="another corpus"):
        synthetic_store.main(["build", str(out), "--tokens", "7000", "--dim", "16", "--quiet"])


def test_bench_assign_table(bundle, built, capsys):
    """tools/bench_assign.py: the exact scan, faiss's IVF and the cell-grouped products on one store's centroids
    (every cell probed: the exact answers)."""
    from tools import bench_assign

    assert bench_assign.main([str(built), str(bundle), "--tokens", "500", "--probes", "default,100", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["method"].startswith("exact") and rows[0]["exact_share"] == 1.0 and rows[0]["mean_loss"] == 0.0
    every = [r for r in rows if r["method"].endswith("probe 16")]  # 64 centroids: 16 cells, all probed
    assert every and every[0]["exact_share"] > 0.99 and every[0]["mean_loss"] < 1e-6
    assert all(0 <= r["exact_share"] <= 1 and r["us_per_token"] > 0 for r in rows)


def test_bench_versions_refuses_a_commit_whose_engine_it_cannot_isolate(tmp_path):
    """A commit after the move under lodestore. would import the installed engine, not its own: refused."""
    from tools import bench_versions

    with pytest.raises(SystemExit, match="before the package moved"):
        bench_versions.main([str(tmp_path), str(tmp_path / "q.npy"), "--rev", "HEAD"])
    with pytest.raises(SystemExit, match="before the package moved"):
        bench_versions.main([str(tmp_path), str(tmp_path / "q.npy"), "--rev", "no-such-commit"])


def test_plot_memlimit_takes_the_cached_row_and_the_best_limited_one():
    from tools.plot_memlimit import points_from_run

    rows = [{"memory_limit": "cache=2", "p50_ms": 10.0, "placement": "disk"},
            {"memory_limit": "cache=2", "p50_ms": 9.0, "placement": "disk"},  # a second cached row: not the baseline
            {"memory_limit": "1GB", "p50_ms": 14.0, "placement": "disk"},
            {"memory_limit": "1GB", "p50_ms": 12.0, "placement": "disk"},
            {"memory_limit": "1GB", "p50_ms": 11.0, "placement": "index-paged"},  # another budget: not this curve
            {"memory_limit": None, "p50_ms": 1.0, "placement": "disk"}]
    assert points_from_run(1e8, rows) == (1e8, 10.0, 12.0)
    with pytest.raises(SystemExit, match="needs a cached row"):
        points_from_run(1e8, rows[2:])


def test_bench_kmeans_compares_faiss_and_cell_trained_stores(bundle, tmp_path, capsys):
    """tools/bench_kmeans.py: two stores of one bundle at the same K, one per k-means, each searched."""
    from tools import bench_kmeans

    work = tmp_path / "km"
    assert bench_kmeans.main([str(bundle), "--work", str(work), "--queries", "6", "--centroids", "64", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["faiss", "cell"] and {r["K"] for r in rows} == {64}
    assert all(0 < r["mean_cos"] <= 1 and 0 <= r["recall"] <= 1 and r["build_s"] >= r["train_s"] > 0 for r in rows)
    with lodestore.Store.open(work / "store-faiss") as a, lodestore.Store.open(work / "store-cell") as b:
        assert not np.array_equal(a.codec_state().codec.centroids, b.codec_state().codec.centroids)


def test_bench_stop_tabulates_each_rule_and_restores_the_engine(bundle, built, capsys):
    """tools/bench_stop.py: one row per rule; a fixed rule scores exactly its survivors (the candidates
    permitting); the engine's own rule and constant are back in place afterwards, also after a bad rule."""
    from lodestore.engine import _rerank
    from tools import bench_stop

    before = (_rerank.stop, _rerank.STOP_EXPECTED)
    assert bench_stop.main([str(bundle), str(built), "--rules", "legacy,adaptive,adaptive:0.5,fixed:40,adaptive@32",
                            "--queries", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| rule")]
    assert [r.split(" | ")[0] for r in rows] == ["| legacy", "| adaptive", "| adaptive:0.5", "| fixed:40", "| adaptive@32"]
    waved = rows[4].split(" | ")  # the Searcher ran with waves of 32 (engine tests check what a wave scores)
    assert waved[3] == "32" and int(waved[7]) > 0
    assert rows[0].split(" | ")[3] == "256" and rows[1].split(" | ")[3] == "128"  # legacy's; this store's
    fixed = rows[3].split(" | ")
    assert fixed[1] == "40" and int(fixed[6]) <= 40
    assert (_rerank.stop, _rerank.STOP_EXPECTED) == before
    with pytest.raises(SystemExit, match="unknown rule"):
        bench_stop.main([str(bundle), str(built), "--rules", "adaptive,sometimes", "--queries", "2"])
    assert (_rerank.stop, _rerank.STOP_EXPECTED) == before


def test_ground_truth_keeps_zero_padded_query_tokens_at_zero(bundle, tmp_path):
    """A zero-padded query token (encoders pad short queries) adds nothing, as in the engine: the truth equals
    the truth of the query without it, and exhaustive search over a store agrees (no NaN ranking)."""
    import shutil

    padded = tmp_path / "padded"
    shutil.copytree(bundle, padded)
    queries = np.load(bundle / "queries.npy")
    queries[:, -3:] = 0.0  # the last three tokens of every query: padding
    np.save(padded / "queries.npy", queries)
    (padded / "truth_k100.npy").unlink(missing_ok=True)
    top = ground_truth.exact_topk(padded, k=5, progress=False)
    trimmed = tmp_path / "trimmed"
    shutil.copytree(padded, trimmed)
    np.save(trimmed / "queries.npy", np.ascontiguousarray(queries[:, :-3]))
    np.testing.assert_array_equal(top, ground_truth.exact_topk(trimmed, k=5, progress=False))


def test_bench_peers_ndcg_from_the_bundles_judgements(tmp_path):
    """nDCG@10 of bench_peers' result lists (bundle positions) against qrels.tsv: judged queries only,
    graded gains, None for a bundle without judgements."""
    from tools import bench_peers

    (tmp_path / "ids.txt").write_text("d0\nd1\nd2\nd3\n")
    (tmp_path / "query_ids.txt").write_text("q1\nq2\nq3\n")
    assert bench_peers.judged_ndcg(tmp_path, [[0, 1], [1, 2], [3, 0]]) is None
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\nq2\td2\t1\n")
    # q1: relevant first (1.0); q2: relevant second (1 / log2(3)); q3 has no judgements: left out
    got = bench_peers.judged_ndcg(tmp_path, [[0, 1], [1, 2], [3, 0]])
    assert got == pytest.approx((1.0 + 1.0 / np.log2(3.0)) / 2)
