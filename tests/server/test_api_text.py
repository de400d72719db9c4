"""A text Index behind the app: the answers equal Index.search, text writes round-trip, text-only errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install -e '.[test,serve]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx: pip install -e '.[test,serve]'")

from lodestore import Index  # noqa: E402
from lodestore.server import Limits  # noqa: E402

from .serving import SAMPLE, TEXT_DOCS, app_client  # noqa: E402

QUERIES = [json.loads(line)["text"] for line in (SAMPLE / "queries.jsonl").read_text().splitlines()[:4]]


def _hits(index_hits) -> list[dict]:
    return [{"id": h.id, "score": pytest.approx(h.score, rel=1e-5), "title": h.title, "text": h.text,
             "metadata": h.metadata} for h in index_hits]


def test_text_search_equals_index_search(text_index_path: Path) -> None:
    with Index.open(text_index_path) as index:
        expected = index.search(QUERIES, k=5)  # the default mode (hybrid), as the server's text search
        maxsim = index.search(QUERIES[0], k=5, mode="maxsim")  # what query vectors get
        query_vectors = index.query_vectors(QUERIES[:1])
        generation = index.store.generation
    with app_client(text_index_path) as client:
        for q, want in zip(QUERIES, expected):
            r = client.post("/search", json={"query": q, "k": 5})
            assert r.status_code == 200, r.text
            assert r.json()["hits"] == _hits(want) and r.json()["generation"] == generation
        batch = client.post("/search", json={"queries": QUERIES, "k": 5}).json()
        assert [res["hits"] for res in batch["results"]] == [_hits(w) for w in expected]
        # an Index also takes already-encoded query vectors: searched by MaxSim, their only mode
        r = client.post("/search", json={"vectors": query_vectors[0].tolist(), "k": 5})
        assert r.json()["hits"] == _hits(maxsim)
        assert client.get("/stats").json()["kind"] == "text"


def test_text_writes_round_trip(text_index: Path) -> None:
    with app_client(text_index) as client:
        g = client.get("/ready").json()["generation"]
        body = {"ids": ["new-1", "new-2"], "texts": ["Gluons bind quarks inside protons and neutrons.",
                                                     "Tidal forces come from the moon's gravity."],
                "titles": ["Gluons", "Tides"], "metadata": [{"src": "test"}, {}]}
        assert client.post("/documents", json=body).json() == {"generation": g + 1}
        hits = client.post("/search", json={"query": "what binds quarks", "k": 3}).json()
        assert hits["generation"] == g + 1
        assert hits["hits"][0] == {"id": "new-1", "score": hits["hits"][0]["score"], "title": "Gluons",
                                   "text": body["texts"][0], "metadata": {"src": "test"}}
        r = client.post("/documents", json={"ids": ["new-1"], "texts": ["again"]})
        assert r.status_code == 409 and r.json()["error"]["field"] == "ids[0]"
        r = client.post("/documents", json={"ids": ["new-1"], "texts": ["Quarks, again."], "upsert": True})
        assert r.json() == {"generation": g + 2}
        assert client.request("DELETE", "/documents", json={"ids": ["new-2"]}).json() == {"generation": g + 3}
        assert client.post("/compact", json={}).json() == {"generation": g + 4}
    with Index.open(text_index) as index:
        assert len(index) == TEXT_DOCS + 1 and "new-2" not in index.store
        assert index.documents(["new-1"])[0]["text"] == "Quarks, again."


SEARCH_ERRORS = [
    ({"query": "   "}, "query"),
    ({"query": "x" * 5000}, "query"),
    ({"query": 7}, "query"),
    ({"queries": ["fine", ""]}, "queries[1]"),
    ({"vectors": [[0.1] * 7]}, "vectors"),
]
ADD_ERRORS = [
    ({"ids": ["n"]}, "texts"),
    ({"ids": ["n"], "texts": [""]}, "texts[0]"),
    ({"ids": ["n"], "texts": [None]}, "texts[0]"),
    ({"ids": ["n", "m"], "texts": ["a"]}, "texts"),
    ({"ids": ["n"], "texts": ["a"], "vectors": [[[0.1]]]}, "vectors"),
    ({"ids": ["n"], "texts": ["x" * 2000]}, "texts[0]"),
]


def test_text_errors_write_nothing(text_index: Path) -> None:
    with app_client(text_index, limits=Limits(max_query_chars=4096, max_text_chars=1000)) as client:
        for body, field in SEARCH_ERRORS:
            r = client.post("/search", json=body)
            assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
        for body, field in ADD_ERRORS:
            r = client.post("/documents", json=body)
            assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
        assert client.get("/ready").json()["generation"] == 1
