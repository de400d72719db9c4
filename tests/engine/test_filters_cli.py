"""Metadata filters from the command line (`lodestore build --metadata`, `search --where --param`) and
tools/bench_filters.py end to end on a tiny bundle (no figures asserted)."""

from __future__ import annotations

import json

import pytest

import lodestore
from lodestore import cli
from tools import bench_filters, make_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("fcli") / "bundle"
    make_bundle.main([str(path), "--tokens", "6000", "--queries", "6", "--seed", "3", "--dim", "32"])
    return path


@pytest.fixture(scope="module")
def built(bundle, tmp_path_factory):
    meta = tmp_path_factory.mktemp("fcli") / "meta.jsonl"
    bench_filters.main(["metadata", str(bundle), str(meta)])
    path = tmp_path_factory.mktemp("fcli") / "store"
    assert cli.main(["build", str(path), "--embeddings", str(bundle), "--centroids", "64", "--quiet",
                     "--metadata", str(meta)]) == 0
    return path


def test_search_where_param(bundle, built, capsys):
    capsys.readouterr()
    assert cli.main(["search", str(built), "--queries", str(bundle / "queries.npy"), "-k", "50", "--json",
                     "--where", "year >= ? AND lang = ?", "--param", "2010", "--param", "en"]) == 0
    results = json.loads(capsys.readouterr().out)
    with lodestore.Store.open(built) as s:
        for hits in results:
            metas = s.get_metadata([h["id"] for h in hits])
            assert hits and all(m["year"] >= 2010 and m["lang"] == "en" for m in metas)


@pytest.mark.parametrize("args, message", [
    (["--where", "year >= ?"], "more '?' placeholders than the 0 params given"),
    (["--where", "year >= ?", "--param", "x' OR 1=1"], "param 1 for 'year' is str"),
    (["--where", "nope = 1"], "unknown metadata field 'nope'"),
    (["--param", "1"], "--param given without --where"),
    (["--where", "lang = ?", "--param", "\"2010\"", "--param", "3"], "2 params were given"),
])
def test_search_filter_errors_are_one_line(bundle, built, capsys, args, message):
    capsys.readouterr()
    assert cli.main(["search", str(built), "--queries", str(bundle / "queries.npy")] + args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_build_refuses_bad_metadata_files(bundle, tmp_path, capsys):
    meta = tmp_path / "m.jsonl"
    meta.write_text('{"a": 1}\nnot json\n')
    assert cli.main(["build", str(tmp_path / "s"), "--embeddings", str(bundle), "--quiet", "--metadata", str(meta)]) == 2
    assert "line 2 is not JSON" in capsys.readouterr().err


def test_bench_filters_runs(bundle, built, capsys):
    capsys.readouterr()
    assert bench_filters.main(["run", str(bundle), str(built), "--queries", "3", "--selectivities", "0.1,1"]) == 0
    out = capsys.readouterr().out
    assert "| unfiltered |" in out and "| 10.0% |" in out and "bytes per document" in out
