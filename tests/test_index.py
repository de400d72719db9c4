"""The text Index: encode, store text with the vectors, search by text, refuse a different encoder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import lodestore
from lodestore import Encoder, Index, Store, cli
from lodestore.collection import Collection

SAMPLE = Path(__file__).parent.parent / "tools" / "data" / "scifact-sample"
N_DOCS = 24


@pytest.fixture(scope="module")
def enc() -> Encoder:
    return Encoder.default(intra_op_num_threads=2)


@pytest.fixture(scope="module")
def sample() -> Collection:
    return Collection.load(SAMPLE, max_docs=N_DOCS)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, enc: Encoder, sample: Collection) -> Path:
    path = tmp_path_factory.mktemp("idx") / "index"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation of long abstracts; small-K codec
        with Index.create(path, enc) as index:
            index.add([d["_id"] for d in sample.docs], [d["text"] for d in sample.docs],
                      [{"n": i, "tags": ["a", "b"]} for i in range(len(sample.docs))],
                      titles=[d["title"] for d in sample.docs])
    return path


def test_round_trip_returns_stored_text_and_metadata(built: Path, enc: Encoder, sample: Collection) -> None:
    with Index.open(built, enc) as index:
        assert len(index) == N_DOCS
        assert index.store.verify().ok
        for i in (0, 7, N_DOCS - 1):
            doc = sample.docs[i]
            hits = index.search(doc["title"], k=3)
            assert hits[0].id == doc["_id"], "a document's own title must find it first"
            assert hits[0].title == doc["title"] and hits[0].text == doc["text"]
            assert hits[0].metadata == {"n": i, "tags": ["a", "b"]}
            assert hits[0].score >= hits[1].score >= hits[2].score


def test_batch_equals_one_at_a_time(built: Path, enc: Encoder, sample: Collection) -> None:
    queries = [d["title"] for d in sample.docs[:4]]
    with Index.open(built, enc) as index:
        batch = index.search(queries, k=5)
        single = [index.search(q, k=5) for q in queries]
    assert [[(h.id, round(h.score, 4)) for h in r] for r in batch] == [[(h.id, round(h.score, 4)) for h in r] for r in single]


def test_open_rebuilds_the_recorded_default_encoder(built: Path) -> None:
    with Index.open(built) as index:
        assert index.encoder.identity() == index.store.manifest.encoder


def test_snippet() -> None:
    hit = lodestore.Hit("x", 1.0, text="one two three four")
    assert hit.snippet(2) == "one two ..."
    assert hit.snippet(4) == "one two three four"


def test_different_encoder_refused(built: Path) -> None:
    other = Encoder.default(intra_op_num_threads=1, query_length=16)
    with pytest.raises(ValueError, match="made by a different encoder.*config"):
        Index.open(built, other)


def test_store_without_encoder_refused(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Store.create(tmp_path / "s", dim=8) as store:
            store.add(["a"], [np.ones((3, 8), np.float32)])
    with pytest.raises(ValueError, match="records no encoder"):
        Index.open(tmp_path / "s")


@pytest.mark.parametrize(
    "ids, texts, kwargs, message",
    [
        (["a", "b"], ["some text", ""], {}, "document 'b': text is empty"),
        (["a", "b"], ["some text", "   "], {}, "document 'b': text is empty"),
        (["a", 7], ["some text", "more"], {}, "id 7 is not a non-empty string"),
        (["a", "a"], ["x", "y"], {}, "duplicate document id 'a'"),
        (["a"], ["x", "y"], {}, "got 1 ids for 2 texts"),
        ("ab", ["x", "y"], {}, "ids must be a list"),
        (["a"], ["x"], {"metadata": ["not a dict"]}, "metadata is str, not a dict"),
        (["a"], ["x"], {"metadata": [{"k": object()}]}, "not JSON-serializable"),
        (["a"], ["x"], {"titles": [3]}, "title is int"),
        ([], [], {}, "nothing to add"),
    ],
)
def test_bad_input_rejected_before_anything_is_written(tmp_path: Path, enc: Encoder, ids, texts, kwargs, message) -> None:
    with Index.create(tmp_path / "i", enc) as index:
        with pytest.raises(ValueError, match=message):
            index.add(ids, texts, **kwargs)
        assert index.store.generation == 0
        assert not list((tmp_path / "i" / "segments").iterdir()), "nothing may be left behind"
        assert not (tmp_path / "i" / "staging").exists(), "nothing may be left behind"


def test_existing_id_refused(built: Path, enc: Encoder, sample: Collection) -> None:
    with Index.open(built, enc, writable=True) as index:
        with pytest.raises(ValueError, match="already in the index"):
            index.add([sample.docs[0]["_id"]], ["text"])


def test_huge_document_truncated_with_one_warning(tmp_path: Path, enc: Encoder) -> None:
    huge = "retrieval " * 5000
    with Index.create(tmp_path / "i", enc, num_centroids=4) as index:
        with pytest.warns(UserWarning, match="1 document\\(s\\) truncated to doc_max_length=300"):
            index.add(["big", "small"], [huge, "a short note about retrieval"])
        n_tokens = index.store.stats()["tokens"]
    assert n_tokens <= 300 + 10  # the huge one is cut to 300 positions (minus dropped punctuation)


def test_add_after_open_is_searchable(tmp_path: Path, enc: Encoder) -> None:
    path = tmp_path / "i"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Index.create(path, enc, num_centroids=8) as index:
            index.add(["a", "b"], ["the cat sat on the mat", "stock markets fell sharply today"])
            assert index.search("cat on a mat", k=1)[0].id == "a"
            index.add(["c"], ["quantum chromodynamics of gluons"])  # the next search sees generation 2
            assert index.search("gluons and quantum chromodynamics", k=1)[0].id == "c"
            index.add(["a"], ["gluons in quantum chromodynamics, again"], upsert=True)
            hit = index.search("gluons and quantum chromodynamics", k=1)[0]
            assert hit.id in ("a", "c")
            assert index.documents(["a"])[0]["text"] == "gluons in quantum chromodynamics, again"
            index.delete(["c"])
            assert "c" not in {h.id for h in index.search("gluons and quantum chromodynamics", k=3)}
            index.store.compact()
            assert index.documents(["a", "b"])[1]["text"] == "stock markets fell sharply today"


def test_cli_index_query_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "cli-index")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["index", path, "--collection", str(SAMPLE), "--max-docs", "30", "--quiet", "--threads", "2"]) == 0
    assert "committed generation 1" in capsys.readouterr().out
    assert cli.main(["index", path, "--collection", str(SAMPLE), "--max-docs", "30", "--quiet"]) == 0
    assert "nothing to add" in capsys.readouterr().out  # re-running adds nothing twice

    first = Collection.load(SAMPLE, max_docs=30).docs[0]
    assert cli.main(["query", path, first["title"], "-k", "2"]) == 0
    out = capsys.readouterr().out
    rank, score, doc_id = out.splitlines()[1].split()[:3]
    assert (rank, doc_id) == ("1", first["_id"]) and float(score) > 0
    assert first["text"].split()[0] in out
    assert cli.main(["query", path, first["title"], "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2] and hits[0]["id"] == first["_id"]

    assert cli.main(["eval", path, "--collection", str(SAMPLE), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"engine", "exhaustive"}
    for run in res.values():
        assert 0.0 <= run["nDCG@10"] <= 1.0 and run["queries"] >= 1
    assert cli.main(["eval", path, "--collection", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["run", "nDCG@10", "R@100", "RR@10"]
    assert "exhaustive MaxSim over the same store" in out


def test_cli_query_on_embedding_store_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Store.create(tmp_path / "s", dim=8) as store:
            store.add(["a"], [np.ones((3, 8), np.float32)])
    assert cli.main(["query", str(tmp_path / "s"), "anything"]) == 2
    assert "records no encoder" in capsys.readouterr().err


@pytest.mark.parametrize("reduction", ["pca", "random"])
def test_reduced_index_finds_documents_by_their_titles(tmp_path: Path, enc: Encoder, sample: Collection, reduction: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Index.create(tmp_path / "i", enc, dim=64, reduction=reduction) as index:
            index.add([d["_id"] for d in sample.docs], [d["text"] for d in sample.docs], titles=[d["title"] for d in sample.docs])
    with Index.open(tmp_path / "i", enc) as index:
        stats = index.store.stats()
        assert (stats["dim"], stats["input_dim"], stats["reduction"]) == (64, enc.dim, reduction)
        found = sum(index.search(d["title"], k=1)[0].id == d["_id"] for d in sample.docs[:8])
        assert found >= 7


def test_add_encoded_bundle_stores_what_add_stores(tmp_path: Path, enc: Encoder, sample: Collection) -> None:
    from tools import encode_collection

    docs = sample.docs[:10]
    bundle = tmp_path / "bundle"
    assert encode_collection.main([str(SAMPLE), str(bundle), "--max-docs", "10", "--threads", "2"]) == 0
    ids, texts, titles = [d["_id"] for d in docs], [d["text"] for d in docs], [d["title"] for d in docs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Index.create(tmp_path / "a", enc, num_centroids=16) as a, Index.create(tmp_path / "b", enc, num_centroids=16) as b:
            a.add(ids, texts, titles=titles)
            b.add_encoded(bundle, ids, texts, titles=titles)
            for doc_id in ids:
                np.testing.assert_array_equal(a.store.get(doc_id), b.store.get(doc_id))
            assert a.documents(ids) == b.documents(ids)
            with pytest.raises(ValueError, match="not the given ids in the same order"):
                b.add_encoded(bundle, ids[::-1], texts[::-1])
    other = Encoder.default(intra_op_num_threads=1, doc_max_length=64)
    with Index.create(tmp_path / "c", other) as c:
        with pytest.raises(ValueError, match="made by a different encoder"):
            c.add_encoded(bundle, ids, texts)


def test_search_filters_on_metadata(built: Path, enc: Encoder, sample: Collection) -> None:
    """Index.add keeps metadata as typed columns too: search(where=, params=) returns only matching documents."""
    with Index.open(built, enc) as index:
        assert index.store.metadata_fields == {"n": "int", "tags": "tags"}
        hits = index.search(sample.docs[3]["title"], k=N_DOCS, where="n < ? AND tags CONTAINS ?", params=(5, "a"))
        assert sorted(h.metadata["n"] for h in hits) == [0, 1, 2, 3, 4] and hits[0].id == sample.docs[3]["_id"]
        with pytest.raises(ValueError, match="unknown metadata field 'year'"):
            index.search("anything", where="year > 1")


def test_add_refuses_untyped_metadata_before_encoding(built: Path, enc: Encoder, tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(built, path)
    with Index.open(path, enc, writable=True) as index:
        generation = index.store.generation
        for meta, message in (({"n": "seven"}, "field 'n' has more than one type"),
                              ({"deep": {"a": 1}}, "dict is not a metadata type")):
            with pytest.raises(ValueError, match=message):
                index.add(["new"], ["some text"], [meta])
        assert index.store.generation == generation and "new" not in index.store
