"""Metadata filters and search modes over HTTP: the same answers as the library, bad filters refused (422)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install -e '.[test,serve]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx: pip install -e '.[test,serve]'")

import lodestore  # noqa: E402
from lodestore.index import Index  # noqa: E402

from .serving import VEC_DOCS, VectorCorpus, app_client  # noqa: E402


def _tag_vectors(path: Path, corpus: VectorCorpus, client) -> list[str]:
    """Add the corpus's 8 spare documents with typed metadata through the API; the ids with year >= 2020."""
    ids = [f"meta-{i}" for i in range(8)]
    body = {"ids": ids, "vectors": [corpus.docs[VEC_DOCS + i].tolist() for i in range(8)],
            "metadata": [{"year": 2015 + i, "lang": "en" if i % 2 else "de"} for i in range(8)]}
    r = client.post("/documents", json=body)
    assert r.status_code == 200, r.text
    return [i for n, i in enumerate(ids) if 2015 + n >= 2020]


def test_vector_search_with_where_matches_the_searcher(vec_store: Path, vec_corpus: VectorCorpus) -> None:
    with app_client(vec_store) as client:
        recent = _tag_vectors(vec_store, vec_corpus, client)
        q = vec_corpus.docs[VEC_DOCS + 3][:6]
        r = client.post("/search", json={"vectors": q.tolist(), "k": 5, "where": "year >= ? AND lang = ?",
                                         "params": [2020, "en"]})
        assert r.status_code == 200, r.text
        got = [h["id"] for h in r.json()["hits"]]
        assert got and set(got) <= {"meta-5", "meta-7"} and recent == ["meta-5", "meta-6", "meta-7"]
        assert r.json()["hits"][0]["metadata"]["lang"] == "en"
        unfiltered = [h["id"] for h in client.post("/search", json={"vectors": q.tolist(), "k": 5}).json()["hits"]]
        assert unfiltered[0] == "meta-3"  # the query's own document wins without the filter (2018: filtered out)
        assert "meta-3" not in got
    with lodestore.Searcher(vec_store) as searcher:
        want = searcher.search([q], k=5, where="year >= ? AND lang = ?", params=[2020, "en"])[0]
    assert got == [doc_id for doc_id, _ in want]


@pytest.mark.parametrize("body, field, code", [
    ({"where": "colour = ?", "params": ["red"]}, "where", "invalid_filter"),  # no such field
    ({"where": "year >= ?"}, "params", "invalid_filter"),  # a placeholder without its value
    ({"where": "year >= ?", "params": ["2020"]}, "where", "invalid_filter"),  # a str for an int field
    ({"where": "year >=", "params": []}, "where", "invalid_filter"),
    ({"where": {"year": 2020}}, "where", "invalid_field"),
    ({"where": "year >= ?", "params": {"0": 1}}, "params", "invalid_field"),
    ({"params": [1]}, "params", "invalid_field"),
    ({"filter": "year > 1"}, "filter", "unsupported_field"),
    ({"mode": "hybrid"}, "mode", "mode_not_supported"),
    ({"mode": "fuzzy"}, "mode", "invalid_field"),
    ({"fusion": "max"}, "fusion", "invalid_field"),
])
def test_bad_filters_and_modes_are_refused(vec_store: Path, vec_corpus: VectorCorpus, body, field, code) -> None:
    with app_client(vec_store) as client:
        _tag_vectors(vec_store, vec_corpus, client)
        r = client.post("/search", json={"vectors": vec_corpus.docs[0][:4].tolist(), **body})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert (err["field"], err["code"]) == (field, code), err


def test_text_search_modes_and_filters_match_the_index(text_index: Path) -> None:
    with app_client(text_index) as client:
        body = {"ids": ["m-1", "m-2", "m-3"], "texts": ["Gluons bind quarks inside protons.",
                                                        "Quarks carry colour charge and bind by gluons.",
                                                        "Tidal forces come from the moon."],
                "metadata": [{"kind": "physics", "year": 2001}, {"kind": "physics", "year": 2021},
                             {"kind": "earth", "year": 2021}]}
        assert client.post("/documents", json=body).status_code == 200
        answers = {}
        for mode, fusion in (("maxsim", "rrf"), ("bm25", "rrf"), ("hybrid", "rrf"), ("hybrid", "score")):
            r = client.post("/search", json={"query": "quarks and gluons", "k": 3, "mode": mode, "fusion": fusion,
                                             "where": "year = ?", "params": [2021]})
            assert r.status_code == 200, r.text
            answers[mode, fusion] = [(h["id"], h["score"]) for h in r.json()["hits"]]
            assert {i for i, _ in answers[mode, fusion]} <= {"m-2", "m-3"}
    with Index.open(text_index) as index:
        for (mode, fusion), got in answers.items():
            want = index.search("quarks and gluons", k=3, mode=mode, fusion=fusion, where="year = ?", params=[2021])
            assert [i for i, _ in got] == [h.id for h in want]
            assert [s for _, s in got] == pytest.approx([h.score for h in want], rel=1e-5)


def test_client_sends_filters(vec_store: Path, vec_corpus: VectorCorpus, monkeypatch) -> None:
    from lodestore.client import Client

    sent = {}

    def fake_request(self, method, path, body=None):
        sent.update(body)
        return {"hits": []}

    monkeypatch.setattr(Client, "request", fake_request)
    Client("http://127.0.0.1:1").search(np.zeros((2, 4), np.float32), k=3, where="year > ?", params=(2020,),
                                        mode="maxsim")
    assert sent["where"] == "year > ?" and sent["params"] == [2020] and sent["mode"] == "maxsim"
    assert "fusion" not in sent
