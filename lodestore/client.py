"""A small client for `lodestore serve`, with the same search / add / delete shapes as Index.

Standard library only (urllib), so it works without the `serve` extra:

    from lodestore import Client
    client = Client("http://127.0.0.1:8080", api_key=None)
    hits = client.search("what causes tides", k=5)          # list[Hit], as Index.search
    client.add(["d1"], ["the moon pulls the sea"], [{"src": "notes"}])
    client.delete(["d1"])

Each call returns what the Index method returns; `client.generation` is the
generation the last answer came from. A server error raises ClientError, which
is also a ValueError for bad input (4xx other than auth/conflict/unknown id), a
KeyError for unknown ids on delete, as Index raises them.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any, Sequence

import numpy as np

from lodestore.index import Hit


class ClientError(Exception):
    """The server answered with an error: HTTP status, code, message and (where one is at fault) the field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message, self.field = status, code, message, field


class BadRequestError(ClientError, ValueError):
    """The request was refused as bad input (400, 413, 422) or conflicting (409); nothing was written."""


class UnknownIdError(ClientError, KeyError):
    """An id to delete is not in the store (404); nothing was deleted."""

    def __str__(self) -> str:  # KeyError would repr the message
        return ClientError.__str__(self)


def _error(status: int, body: bytes) -> ClientError:
    try:
        err = json.loads(body)["error"]
        code, message, field = err["code"], err["message"], err.get("field")
    except (ValueError, KeyError, TypeError):
        code, message, field = "http_error", body[:200].decode("utf-8", "replace"), None
    kind = UnknownIdError if status == 404 and code == "unknown_id" else \
        BadRequestError if status in (400, 409, 413, 422) else ClientError
    return kind(status, code, message, field)


def encode_matrix(a: Any) -> dict[str, Any]:
    """A (rows, dim) array as the server's base64 float32 matrix."""
    m = np.ascontiguousarray(np.asarray(a, dtype="<f4"))
    if m.ndim != 2:
        raise ValueError(f"expected a (rows, dim) matrix, got shape {m.shape}")
    return {"b64": base64.b64encode(m.tobytes()).decode("ascii"), "shape": list(m.shape)}


class Client:
    """Talks to one `lodestore serve` server. `api_key` is sent as Authorization: Bearer."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.generation: int | None = None

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # ------------------------------------------------------------------ transport
    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One JSON request; the decoded answer, or ClientError."""
        data = None if body is None else json.dumps(body, allow_nan=False).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise _error(e.code, e.read()) from None
        if isinstance(answer, dict) and "generation" in answer:
            self.generation = answer["generation"]
        return answer

    # ------------------------------------------------------------------ Index-shaped API
    def search(self, query: str | Sequence[str] | np.ndarray | Sequence[np.ndarray], k: int = 10, *,
               where: str | None = None, params: Sequence[Any] | None = None, mode: str | None = None,
               fusion: str | None = None) -> list[Hit] | list[list[Hit]]:
        """Top-k hits for one query (a string, or a (q_len, dim) array), or one list per query for a list of them.

        where/params: only documents whose metadata match (e.g. where="year >= ?", params=[2019]);
        mode ("maxsim", "bm25", "hybrid") and fusion ("rrf", "score"): text queries on a text index.
        None leaves the server's default."""
        if isinstance(query, str):
            body: dict[str, Any] = {"query": query}
        elif isinstance(query, np.ndarray) and query.ndim == 2:
            body = {"vectors": encode_matrix(query)}
        else:
            items = list(query)
            if not items:
                raise ValueError("no queries given")
            body = {"queries": [q if isinstance(q, str) else encode_matrix(q) for q in items]}
        body["k"] = k
        for name, value in (("where", where), ("params", None if params is None else list(params)), ("mode", mode),
                            ("fusion", fusion)):
            if value is not None:
                body[name] = value
        answer = self.request("POST", "/search", body)
        if "hits" in answer:
            return _hits(answer["hits"])
        return [_hits(r["hits"]) for r in answer["results"]]

    def add(self, ids: Sequence[str], texts: Sequence[str] | None = None,
            metadata: Sequence[dict[str, Any]] | None = None, *, titles: Sequence[str] | None = None,
            vectors: Sequence[np.ndarray] | None = None, upsert: bool = False) -> int:
        """Add documents in one commit (texts for a text index, vectors for a vector store); the new generation."""
        body: dict[str, Any] = {"ids": list(ids), "upsert": upsert}
        for name, value in (("texts", texts), ("metadata", metadata), ("titles", titles)):
            if value is not None:
                body[name] = list(value)
        if vectors is not None:
            body["vectors"] = [encode_matrix(v) for v in vectors]
        return self.request("POST", "/documents", body)["generation"]

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents in one commit; the new generation."""
        return self.request("DELETE", "/documents", {"ids": list(ids)})["generation"]

    def compact(self) -> int:
        return self.request("POST", "/compact", {})["generation"]

    def stats(self) -> dict[str, Any]:
        return self.request("GET", "/stats")

    def ready(self) -> bool:
        try:
            self.request("GET", "/ready")
        except (ClientError, OSError):
            return False
        return True


def _hits(items: list[dict[str, Any]]) -> list[Hit]:
    return [Hit(h["id"], float(h["score"]), h.get("title", ""), h.get("text", ""), h.get("metadata") or {})
            for h in items]
