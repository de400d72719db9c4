"""Bad input: a 4xx JSON error naming the field, and nothing written. Auth, read-only, a damaged store."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install -e '.[test,serve]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx: pip install -e '.[test,serve]'")

import lodestore  # noqa: E402
from lodestore.server import Limits  # noqa: E402

from .serving import VEC_DIM, VEC_DOCS, VectorCorpus, app_client  # noqa: E402

ROW = [0.1] * VEC_DIM
KEY = "k3y-0123456789abcdef"

# (endpoint, body, status, field): each must be refused before anything is written.
BAD = [
    ("/search", b"{not json", 400, "body"),
    ("/search", b"[1, 2]", 400, "body"),
    ("/search", b'{"vectors": [[NaN, 1.0]]}', 400, "body"),
    ("/search", b"\xff\xfe", 400, "body"),
    ("/search", b"[" * 100_000 + b"]" * 100_000, 400, "body"),  # nested past the parser's recursion limit
    ("/search", b'{"vectors": [[' + b"9" * 400 + b', 1.0]]}', 422, "vectors"),  # an integer past float64
    ("/search", {}, 422, "query"),
    ("/search", {"vectors": [ROW], "k": 0}, 422, "k"),
    ("/search", {"vectors": [ROW], "k": "5"}, 422, "k"),
    ("/search", {"vectors": [ROW], "k": True}, 422, "k"),
    ("/search", {"vectors": [ROW], "k": 100000}, 422, "k"),
    ("/search", {"vectors": [ROW], "where": {"year": 2000}}, 422, "where"),
    ("/search", {"vectors": [ROW], "mode": "hybrid"}, 422, "mode"),
    ("/search", {"vectors": [ROW], "params": {"nprobe": 4}}, 422, "params"),
    ("/search", {"vectors": [ROW], "colour": "red"}, 422, "colour"),
    ("/search", {"query": "text on a vector store"}, 422, "query"),
    ("/search", {"vectors": [[0.1] * (VEC_DIM - 1)]}, 422, "vectors"),
    ("/search", {"vectors": [ROW, ROW[:-1]]}, 422, "vectors"),
    ("/search", {"vectors": [["a"] * VEC_DIM]}, 422, "vectors"),
    ("/search", {"vectors": [[1e39] * VEC_DIM]}, 422, "vectors"),
    ("/search", {"vectors": []}, 422, "vectors"),
    ("/search", {"vectors": [ROW] * 600}, 422, "vectors"),
    ("/search", {"vectors": {"b64": "!!!", "shape": [1, VEC_DIM]}}, 422, "vectors.b64"),
    ("/search", {"vectors": {"b64": base64.b64encode(b"\0" * 8).decode(), "shape": [1, VEC_DIM]}}, 422, "vectors.b64"),
    ("/search", {"vectors": {"b64": "", "shape": [1]}}, 422, "vectors.shape"),
    ("/search", {"vectors": {"b64": base64.b64encode(np.full((1, VEC_DIM), np.nan, "<f4").tobytes()).decode(),
                             "shape": [1, VEC_DIM]}}, 422, "vectors"),
    ("/search", {"queries": []}, 422, "queries"),
    ("/search", {"queries": [[ROW]] * 65}, 422, "queries"),
    ("/search", {"queries": [[ROW], "text"]}, 422, "queries[1]"),
    ("/search", {"queries": [[ROW], [[0.1]]]}, 422, "queries[1]"),
    ("/search", {"query": "a", "vectors": [ROW]}, 422, "vectors"),
    ("/documents", {"ids": ["n1"], "vectors": [[ROW]], "bogus": 1}, 422, "bogus"),
    ("/documents", {"vectors": [[ROW]]}, 422, "ids"),
    ("/documents", {"ids": "n1", "vectors": [[ROW]]}, 422, "ids"),
    ("/documents", {"ids": [], "vectors": []}, 422, "ids"),
    ("/documents", {"ids": ["n1", ""], "vectors": [[ROW], [ROW]]}, 422, "ids[1]"),
    ("/documents", {"ids": ["n1", 7], "vectors": [[ROW], [ROW]]}, 422, "ids[1]"),
    ("/documents", {"ids": ["n1", "n1"], "vectors": [[ROW], [ROW]]}, 422, "ids[1]"),
    ("/documents", {"ids": ["x" * 600], "vectors": [[ROW]]}, 422, "ids[0]"),
    ("/documents", {"ids": ["n1"]}, 422, "vectors"),
    ("/documents", {"ids": ["n1", "n2"], "vectors": [[ROW]]}, 422, "vectors"),
    ("/documents", {"ids": ["n1"], "vectors": [[ROW[:-1]]]}, 422, "vectors[0]"),
    ("/documents", {"ids": ["n1", "n2"], "vectors": [[ROW], [[float("1e39")] * VEC_DIM]]}, 422, "vectors[1]"),
    ("/documents", {"ids": ["n1"], "vectors": [[ROW]], "metadata": ["not a dict"]}, 422, "metadata[0]"),
    ("/documents", {"ids": ["n1"], "vectors": [[ROW]], "titles": [3]}, 422, "titles[0]"),
    ("/documents", {"ids": ["n1"], "vectors": [[ROW]], "upsert": "yes"}, 422, "upsert"),
    ("/documents", {"ids": ["n1"], "texts": ["text for a vector store"]}, 422, "vectors"),
    ("/documents", {"ids": ["v001"], "vectors": [[ROW]]}, 409, "ids[0]"),
    ("/documents", {"ids": [f"n{i}" for i in range(1001)], "vectors": [[ROW]] * 1001}, 422, "ids"),
    ("DELETE /documents", {"ids": ["v001", "nope"]}, 404, "ids[1]"),
    ("DELETE /documents", {"ids": []}, 422, "ids"),
    ("DELETE /documents", {"ids": ["v001"], "where": {}}, 422, "where"),
    ("/compact", {"now": True}, 422, "now"),
]


def _send(client, endpoint: str, body, headers: dict | None = None):
    method, _, path = endpoint.rpartition(" ")
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    return client.request(method or "POST", path, headers=headers, **kwargs)


def test_every_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(vec_store: Path) -> None:
    with lodestore.Store.open(vec_store) as s:
        before = (s.generation, len(s), sorted(p.name for p in (vec_store / "segments").iterdir()))
    with app_client(vec_store) as client:
        for endpoint, body, status, field in BAD:
            r = _send(client, endpoint, body)
            assert r.status_code == status, (endpoint, body if isinstance(body, bytes) else str(body)[:80], r.text)
            error = r.json()["error"]
            assert error["status"] == status and error["field"] == field, (endpoint, error)
            assert field.split("[")[0].split(".")[0] in error["message"] or field == "body", error
            assert "Traceback" not in r.text
        assert client.get("/stats").json()["server"]["errors"] == 0  # none of these was a server fault
    with lodestore.Store.open(vec_store) as s:
        assert (s.generation, len(s), sorted(p.name for p in (vec_store / "segments").iterdir())) == before


def test_configured_limits_and_body_size(vec_store: Path) -> None:
    limits = Limits(max_body_bytes=2000, max_k=3, max_batch=2, max_query_tokens=2, max_documents=1)
    with app_client(vec_store, limits=limits) as client:
        r = client.post("/search", json={"vectors": [ROW], "k": 4})
        assert r.status_code == 422 and r.json()["error"]["code"] == "limit_exceeded"
        assert client.post("/search", json={"vectors": [ROW], "k": 3}).status_code == 200
        assert client.post("/search", json={"vectors": [ROW] * 3}).json()["error"]["field"] == "vectors"
        assert client.post("/search", json={"queries": [[ROW]] * 3}).json()["error"]["field"] == "queries"
        r = client.post("/documents", json={"ids": ["a", "b"], "vectors": [[ROW], [ROW]]})
        assert r.status_code == 422 and r.json()["error"]["field"] == "ids"
        big = b'{"vectors": [' + b",".join([b"[" + b",".join([b"0.1"] * VEC_DIM) + b"]"] * 20) + b"]}"
        r = client.post("/search", content=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks():  # no Content-Length: the limit holds while the body streams in
            for _ in range(10):
                yield b" " * 500

        r = client.post("/search", content=chunks())
        assert r.status_code == 413


def test_unknown_route_and_method_are_json(vec_store_path: Path) -> None:
    with app_client(vec_store_path) as client:
        r = client.get("/nowhere")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = client.get("/search")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_auth_protects_writes_only_by_default(vec_store: Path, vec_corpus: VectorCorpus) -> None:
    doc = {"ids": [vec_corpus.ids[VEC_DOCS]], "vectors": [vec_corpus.docs[VEC_DOCS].tolist()]}
    with app_client(vec_store, api_keys=(KEY,)) as client:
        assert client.post("/search", json={"vectors": [ROW]}).status_code == 200
        for headers in (None, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": KEY},
                        {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"}):
            r = client.post("/documents", json=doc, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["field"] == "Authorization", headers
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert client.request("DELETE", "/documents", json={"ids": ["v001"]}, headers=headers).status_code == 401
            assert client.post("/compact", headers=headers).status_code == 401
        assert client.get("/ready").json()["generation"] == 1  # nothing was written
        r = client.post("/documents", json=doc, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.json()["generation"] == 2


def test_auth_on_everything(vec_store_path: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"# service keys\n\nother-key-0123456789\n{KEY}\n")
    with app_client(vec_store_path, api_key_file=str(key_file), protect="all") as client:
        assert client.post("/search", json={"vectors": [ROW]}).status_code == 401
        assert client.get("/stats").status_code == 401
        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
        ok = {"Authorization": f"Bearer {KEY}"}
        assert client.post("/search", json={"vectors": [ROW]}, headers=ok).status_code == 200
        assert client.get("/stats", headers=ok).json()["server"]["auth"] is True


def test_key_file_checks(tmp_path: Path) -> None:
    from lodestore.server import read_api_keys

    (tmp_path / "empty").write_text("# nothing\n")
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError, match="holds no key"):
        read_api_keys(tmp_path / "empty")
    with pytest.raises(ValueError, match="shorter than 16"):
        read_api_keys(tmp_path / "short")
    with pytest.raises(ValueError, match="cannot read"):
        read_api_keys(tmp_path / "missing")


def test_read_only_refuses_writes(vec_store: Path) -> None:
    with app_client(vec_store, read_only=True) as client:
        r = client.post("/documents", json={"ids": ["n1"], "vectors": [[ROW]]})
        assert r.status_code == 403 and r.json()["error"]["code"] == "read_only"
        assert client.post("/compact").status_code == 403
        assert client.post("/search", json={"vectors": [ROW]}).status_code == 200


def test_writer_busy_is_503_after_the_bound(vec_store: Path) -> None:
    with lodestore.Store.open(vec_store, writable=True):  # another process-like writer holds the lock
        with app_client(vec_store, limits=Limits(write_wait_s=0.3)) as client:
            r = client.post("/documents", json={"ids": ["n1"], "vectors": [[ROW]]})
            assert r.status_code == 503 and r.json()["error"]["code"] == "writer_busy"
            assert r.headers["Retry-After"] == "1"
            assert client.post("/search", json={"vectors": [ROW]}).status_code == 200  # reads go on
    with lodestore.Store.open(vec_store) as s:
        assert "n1" not in s


def test_corrupt_chunk_is_503_naming_it(vec_store: Path, vec_corpus: VectorCorpus) -> None:
    """A damaged residuals chunk: the search that reads it answers 503 naming the file, never a 500."""
    chunks = sorted(p for p in (vec_store / "segments").rglob("*") if p.is_file() and "residuals" in str(p)
                    and p.name != "zarr.json")
    assert chunks, "no residual chunk files found"
    for chunk in chunks:
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
    with app_client(vec_store, memory_budget="1") as client:  # smallest budget: residuals are read per query
        r = client.post("/search", json={"vectors": vec_corpus.docs[5].tolist(), "k": 5})
        if r.status_code == 200:  # the whole store was loaded at open: then /ready would have failed instead
            pytest.fail(f"search over a corrupt chunk answered 200: {r.text[:200]}")
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "corrupt_store" and "residuals" in error["message"]
        assert client.get("/stats").json()["server"]["errors"] >= 1


def test_a_store_corrupt_at_startup_stops_the_app_with_the_stores_error(vec_store: Path) -> None:
    manifest = vec_store / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"generation"', b'"generatiom"', 1))
    with pytest.raises(lodestore.StoreError):
        lodestore.Store.open(vec_store)
    # The app cannot learn the store's kind: creating it fails with the store's own message
    with pytest.raises(lodestore.StoreError):
        with app_client(vec_store):
            pass


def test_a_search_past_the_timeout_is_504_and_the_server_goes_on(vec_store: Path, vec_corpus: VectorCorpus) -> None:
    """A timeout far below any search's time: 504 with a JSON error; later searches and writes still work."""
    with app_client(vec_store, limits=Limits(timeout_s=1e-9)) as client:
        r = client.post("/search", json={"vectors": vec_corpus.docs[1].tolist()})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        r = client.post("/documents", json={"ids": ["n1"], "vectors": [vec_corpus.docs[VEC_DOCS].tolist()]})
        assert r.status_code == 200  # writes are bounded by write_wait_s, not by the search timeout
    with app_client(vec_store) as client:
        assert client.post("/search", json={"vectors": [ROW]}).json()["generation"] == 2
