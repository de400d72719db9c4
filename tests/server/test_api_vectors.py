"""Every endpoint's success shape over a vector store, checked against the library's own answers."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install -e '.[test,serve]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx: pip install -e '.[test,serve]'")

import lodestore  # noqa: E402

from .serving import VEC_DOCS, VectorCorpus, app_client  # noqa: E402


def b64(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"b64": base64.b64encode(a.tobytes()).decode(), "shape": list(a.shape)}


def test_search_matches_the_searcher_in_both_encodings(vec_store_path: Path, vec_corpus: VectorCorpus) -> None:
    queries = [vec_corpus.docs[i][:6] for i in (3, 40, 77)]
    with lodestore.Searcher(vec_store_path) as searcher:
        expected = searcher.search(queries, k=5)
        generation = searcher.generation
    with app_client(vec_store_path) as client:
        for q, want in zip(queries, expected):
            for body in ({"vectors": q.tolist(), "k": 5}, {"vectors": b64(q), "k": 5}):
                r = client.post("/search", json=body)
                assert r.status_code == 200, r.text
                got = r.json()
                assert got["generation"] == generation
                assert [h["id"] for h in got["hits"]] == [doc_id for doc_id, _ in want]
                assert [h["score"] for h in got["hits"]] == pytest.approx([s for _, s in want], rel=1e-5)
                assert set(got["hits"][0]) == {"id", "score", "title", "text", "metadata"}
                assert got["took_ms"] >= 0
        r = client.post("/search", json={"queries": [queries[0].tolist(), b64(queries[1]), b64(queries[2])], "k": 5})
        assert r.status_code == 200, r.text
        batch = r.json()
        assert "hits" not in batch and len(batch["results"]) == 3
        assert [[h["id"] for h in res["hits"]] for res in batch["results"]] == \
            [[doc_id for doc_id, _ in want] for want in expected]


def test_add_search_delete_compact_round_trip(vec_store: Path, vec_corpus: VectorCorpus) -> None:
    new_id, new_doc = vec_corpus.ids[VEC_DOCS], vec_corpus.docs[VEC_DOCS]
    with app_client(vec_store) as client:
        g0 = client.get("/ready").json()["generation"]
        r = client.post("/documents", json={"ids": [new_id], "vectors": [b64(new_doc)], "texts": ["a note"],
                                            "titles": ["Note"], "metadata": [{"tag": "x"}]})
        assert r.status_code == 200, r.text
        assert r.json() == {"generation": g0 + 1}
        hits = client.post("/search", json={"vectors": new_doc.tolist(), "k": 3}).json()
        assert hits["generation"] == g0 + 1
        assert hits["hits"][0] == {"id": new_id, "score": pytest.approx(hits["hits"][0]["score"]),
                                   "title": "Note", "text": "a note", "metadata": {"tag": "x"}}
        # upsert replaces in one commit
        r = client.post("/documents", json={"ids": [new_id], "vectors": [vec_corpus.docs[VEC_DOCS + 1].tolist()],
                                            "upsert": True})
        assert r.json() == {"generation": g0 + 2}
        r = client.request("DELETE", "/documents", json={"ids": [new_id, "v000"]})
        assert r.status_code == 200 and r.json() == {"generation": g0 + 3}
        ids = [h["id"] for h in client.post("/search", json={"vectors": new_doc.tolist(), "k": 20}).json()["hits"]]
        assert new_id not in ids and "v000" not in ids
        r = client.post("/compact")
        assert r.status_code == 200 and r.json() == {"generation": g0 + 4}
        stats = client.get("/stats").json()
    assert stats["kind"] == "vectors" and stats["generation"] == g0 + 4
    assert stats["documents"] == VEC_DOCS - 1 and stats["segments"] == 1
    assert stats["memory"]["rss_bytes"] > 0 and stats["searcher"]["generation"] == g0 + 4
    assert stats["server"]["writes"] == 4
    with lodestore.Store.open(vec_store) as store:  # what the server committed is on disk
        assert store.generation == g0 + 4 and len(store) == VEC_DOCS - 1 and "v000" not in store
        assert store.verify().ok


def test_health_ready_page_and_openapi(vec_store_path: Path) -> None:
    with app_client(vec_store_path) as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready").json()
        assert ready["status"] == "ready" and ready["kind"] == "vectors"
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'id="q"' in page.text and "http://" not in page.text and "https://" not in page.text  # no CDN
        doc = client.get("/openapi.json").json()
        app_routes = {(route.path, method.lower()) for route in client.app.routes
                      for method in route.methods if method != "HEAD"}
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == app_routes
    assert doc["openapi"].startswith("3.")


def test_empty_store_answers_no_hits_and_takes_its_first_documents(tmp_path: Path, vec_corpus: VectorCorpus) -> None:
    lodestore.Store.create(tmp_path / "empty", dim=32, nbits=2, num_centroids=4).close()
    with app_client(tmp_path / "empty") as client:
        r = client.post("/search", json={"vectors": vec_corpus.docs[0].tolist()})
        assert r.status_code == 200 and r.json()["hits"] == [] and r.json()["generation"] == 0
        docs = {"ids": vec_corpus.ids[:10], "vectors": [d.tolist() for d in vec_corpus.docs[:10]]}
        assert client.post("/documents", json=docs).json() == {"generation": 1}
        hits = client.post("/search", json={"vectors": vec_corpus.docs[4].tolist(), "k": 1}).json()
    assert hits["generation"] == 1 and hits["hits"][0]["id"] == vec_corpus.ids[4]
