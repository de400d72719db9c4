"""Request bodies in, checked values out: every bad input becomes an ApiError naming its field.

Nothing here touches the store; a request that fails a check never reaches the
writer. Matrices (queries, documents' vectors) come as nested lists of numbers
or as {"b64": <base64 of little-endian float32>, "shape": [rows, dim]}.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lodestore.hybrid import DEFAULT_FUSION, DEFAULT_MODE, FUSIONS, MODES
from lodestore.store import compile_where

from ._config import Limits

#: Names a client may guess that are not fields: refused with what to send instead.
RESERVED = {
    "filter": "not a field: filter by metadata with where (e.g. \"year >= ? AND lang = ?\") and params",
}


class ApiError(Exception):
    """An answer other than success: HTTP status, a short code, the field at fault (if one), a message."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_field", f"{field}: {message}", field)


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object, or 400. NaN/Infinity literals are refused (JSON has no such numbers)."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        data = json.loads(body.decode("utf-8"), parse_constant=no_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the request body is not UTF-8", "body") from None
    except ValueError as e:
        raise ApiError(400, "malformed_json", f"the request body is not valid JSON ({e})", "body") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "the request body is nested too deeply", "body") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", f"the request body must be a JSON object, not {type(data).__name__}",
                       "body")
    return data


def check_fields(data: dict[str, Any], allowed: set[str], required: set[str] = frozenset()) -> None:
    for name in data:
        if name in RESERVED:
            raise ApiError(422, "unsupported_field", f"{name}: {RESERVED[name]}", name)
        if name not in allowed:
            raise ApiError(422, "unknown_field", f"{name}: unknown field; expected some of {sorted(allowed)}", name)
    for name in sorted(required):
        if name not in data:
            raise ApiError(422, "missing_field", f"{name}: this field is required", name)


def positive_int(data: dict[str, Any], name: str, default: int, limit: int) -> int:
    value = data.get(name, min(default, limit))
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise invalid(name, f"must be a positive integer, got {value!r}")
    if value > limit:
        raise ApiError(422, "limit_exceeded", f"{name}: {value} is over this server's limit of {limit}", name)
    return value


def boolean(data: dict[str, Any], name: str, default: bool = False) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise invalid(name, f"must be true or false, got {value!r}")
    return value


def matrix(value: Any, field: str, dim: int, max_rows: int) -> np.ndarray:
    """A (rows, dim) float32 matrix of finite values from a nested list or a {"b64", "shape"} object."""
    if isinstance(value, dict):
        extra = set(value) - {"b64", "shape"}
        if extra or "b64" not in value or "shape" not in value:
            raise invalid(field, 'a base64 matrix is {"b64": "<float32 little-endian>", "shape": [rows, dim]}')
        shape = value["shape"]
        if (not isinstance(shape, list) or len(shape) != 2
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape)):
            raise invalid(f"{field}.shape", f"must be [rows, dim] (two non-negative integers), got {shape!r}")
        if shape[0] > max_rows:  # before decoding anything
            raise ApiError(422, "limit_exceeded", f"{field}: {shape[0]} rows is over this server's limit of {max_rows}",
                           field)
        if not isinstance(value["b64"], str):
            raise invalid(f"{field}.b64", "must be a base64 string")
        try:
            raw = base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"{field}.b64", "is not valid base64") from None
        if len(raw) != shape[0] * shape[1] * 4:
            raise invalid(f"{field}.b64", f"holds {len(raw)} bytes; shape {shape} of float32 needs "
                                          f"{shape[0] * shape[1] * 4}")
        a = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
    elif isinstance(value, list):
        if len(value) > max_rows:
            raise ApiError(422, "limit_exceeded", f"{field}: {len(value)} rows is over this server's limit of {max_rows}",
                           field)
        if not all(isinstance(row, list) and all(_number(x) for x in row) for row in value):
            raise invalid(field, "must be a list of rows, each a list of numbers")
        widths = {len(row) for row in value}
        if len(widths) > 1:
            raise invalid(field, f"rows have different lengths {sorted(widths)}")
        try:
            a = np.asarray(value, dtype=np.float64).reshape(len(value), widths.pop() if widths else 0)
        except OverflowError:  # an integer too large for a float64
            raise invalid(field, "values must be finite float32 numbers") from None
        with np.errstate(over="ignore"):
            a = a.astype(np.float32)
    else:
        raise invalid(field, f"must be a list of rows or a base64 matrix, got {type(value).__name__}")
    if a.shape[0] == 0:
        raise invalid(field, "has no rows")
    if a.shape[1] != dim:
        raise ApiError(422, "wrong_dimension", f"{field}: rows have {a.shape[1]} values; this store takes {dim}", field)
    if not np.isfinite(a).all():
        raise invalid(field, "values must be finite float32 numbers (NaN, inf or overflow found)")
    return a


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# --------------------------------------------------------------------------- /search


@dataclass
class SearchRequest:
    k: int
    batch: bool
    texts: list[str] | None = None  # text queries, or
    vectors: list[np.ndarray] | None = None  # vector queries (one (q_len, dim) matrix each)
    where: str | None = None  # a metadata filter (lodestore.store compile_where), checked against the store
    params: list[Any] | None = None  # the values of its '?' placeholders
    mode: str = DEFAULT_MODE  # maxsim, bm25 or hybrid (the last two: text queries on a text index)
    fusion: str = DEFAULT_FUSION

    def options(self) -> dict[str, Any]:
        """The keyword arguments of Snapshot.search beyond the queries and k."""
        return {"where": self.where, "params": self.params, "mode": self.mode, "fusion": self.fusion}


def search_request(data: dict[str, Any], limits: Limits, dim: int, takes_text: bool,
                   schema: dict[str, str] | None = None) -> SearchRequest:
    """One query ("query" text or "vectors" matrix) or a batch ("queries": texts or matrices), with an
    optional metadata filter (where, params: compiled against the store's fields `schema` here, so a bad
    one is a 422 before any search work) and, for text queries, a search mode and fusion."""
    check_fields(data, {"query", "vectors", "queries", "k", "where", "params", "mode", "fusion"})
    given = [name for name in ("query", "vectors", "queries") if name in data]
    if len(given) != 1:
        raise ApiError(422, "missing_field" if not given else "invalid_field",
                       "give exactly one of query (text), vectors (a matrix) or queries (a batch)",
                       given[1] if len(given) > 1 else "query")
    k = positive_int(data, "k", 10, limits.max_k)
    req = _queries(data, given[0], k, limits, dim, takes_text)
    req.where, req.params = _filter(data, schema or {})
    req.mode, req.fusion = _mode(data, req.texts is not None)
    return req


def _filter(data: dict[str, Any], schema: dict[str, str]) -> tuple[str | None, list[Any] | None]:
    where, params = data.get("where"), data.get("params")
    if where is None:
        if params is not None:
            raise invalid("params", "params are the values of where's '?' placeholders: send where too")
        return None, None
    if not isinstance(where, str):
        raise invalid("where", 'must be a string, e.g. "year >= ? AND lang = ?" (with params [2019, "en"])')
    if params is not None and not isinstance(params, list):
        raise invalid("params", "must be a list of values, one per '?' of where")
    try:
        compile_where(where, params, schema)
    except ValueError as e:
        raise ApiError(422, "invalid_filter", str(e), "params" if "params" in str(e) else "where") from None
    return where, params


def _mode(data: dict[str, Any], text: bool) -> tuple[str, str]:
    # text queries default to the Index's mode; query vectors can only be searched by MaxSim
    mode, fusion = data.get("mode", DEFAULT_MODE if text else "maxsim"), data.get("fusion", DEFAULT_FUSION)
    if mode not in MODES:
        raise invalid("mode", f"must be one of {', '.join(MODES)}")
    if fusion not in FUSIONS:
        raise invalid("fusion", f"must be one of {', '.join(FUSIONS)}")
    if mode != "maxsim" and not text:
        raise ApiError(422, "mode_not_supported", f"mode: {mode} searches the stored text by keywords and needs "
                                                  "text queries on a text index; query vectors are searched by maxsim",
                       "mode")
    return mode, fusion


def _queries(data: dict[str, Any], name: str, k: int, limits: Limits, dim: int, takes_text: bool) -> SearchRequest:
    if name == "queries":
        items = data["queries"]
        if not isinstance(items, list) or not items:
            raise invalid("queries", "must be a non-empty list of text queries or matrices")
        if len(items) > limits.max_batch:
            raise ApiError(422, "limit_exceeded",
                           f"queries: {len(items)} queries is over this server's limit of {limits.max_batch}", "queries")
        fields_ = [f"queries[{i}]" for i in range(len(items))]
        batch = True
    else:
        items, fields_, batch = [data[name]], [name], False
    if all(isinstance(q, str) for q in items):
        if not takes_text:
            raise ApiError(422, "text_not_supported", f"{name}: this store holds vectors without an encoder; "
                                                      "send query vectors", name)
        for q, f in zip(items, fields_):
            if not q or q.isspace():  # no copy of a long text (lodestore/index.py tests it the same way)
                raise invalid(f, "the query is empty")
            if len(q) > limits.max_query_chars:
                raise ApiError(422, "limit_exceeded", f"{f}: {len(q)} characters is over this server's limit of "
                                                      f"{limits.max_query_chars}", f)
        return SearchRequest(k, batch, texts=list(items))
    if name == "query":
        raise invalid("query", "must be a string (send a matrix as vectors)")
    mixed = [f for q, f in zip(items, fields_) if isinstance(q, str)]
    if mixed:
        raise invalid(mixed[0], "a batch is all text queries or all matrices, not both")
    return SearchRequest(k, batch, vectors=[matrix(q, f, dim, limits.max_query_tokens) for q, f in zip(items, fields_)])


# --------------------------------------------------------------------------- /documents


@dataclass
class AddRequest:
    ids: list[str]
    upsert: bool
    texts: list[str] | None = None
    titles: list[str] | None = None
    metadata: list[dict[str, Any]] | None = None
    vectors: list[np.ndarray] | None = None


def ids_field(data: dict[str, Any], limits: Limits) -> list[str]:
    ids = data.get("ids")
    if not isinstance(ids, list) or not ids:
        raise invalid("ids", "must be a non-empty list of strings")
    if len(ids) > limits.max_documents:
        raise ApiError(422, "limit_exceeded", f"ids: {len(ids)} documents is over this server's limit of "
                                              f"{limits.max_documents}", "ids")
    seen: set[str] = set()
    for i, doc_id in enumerate(ids):
        if not isinstance(doc_id, str) or not doc_id:
            raise invalid(f"ids[{i}]", f"must be a non-empty string, got {doc_id!r}")
        if len(doc_id) > limits.max_id_chars:
            raise ApiError(422, "limit_exceeded", f"ids[{i}]: {len(doc_id)} characters is over this server's limit of "
                                                  f"{limits.max_id_chars}", f"ids[{i}]")
        if doc_id in seen:
            raise invalid(f"ids[{i}]", f"duplicate id {doc_id!r}")
        seen.add(doc_id)
    return ids


def _per_document(data: dict[str, Any], name: str, n: int) -> list[Any] | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid(name, f"must be a list with one entry per id, got {type(value).__name__}")
    if len(value) != n:
        raise invalid(name, f"has {len(value)} entries for {n} ids")
    return value


def add_request(data: dict[str, Any], limits: Limits, dim: int, takes_text: bool) -> AddRequest:
    """Text documents (ids, texts[, titles, metadata]) for an Index; vectors (ids, vectors[, ...]) for a Store."""
    check_fields(data, {"ids", "texts", "titles", "metadata", "vectors", "upsert"}, {"ids"})
    ids = ids_field(data, limits)
    upsert = boolean(data, "upsert")
    texts = _per_document(data, "texts", len(ids))
    titles = _per_document(data, "titles", len(ids))
    metadata = _per_document(data, "metadata", len(ids))
    vectors = _per_document(data, "vectors", len(ids))
    if takes_text:
        if vectors is not None:
            raise ApiError(422, "vectors_not_supported", "vectors: this is a text index; send texts (it encodes them)",
                           "vectors")
        if texts is None:
            raise ApiError(422, "missing_field", "texts: this field is required", "texts")
    elif vectors is None:
        raise ApiError(422, "missing_field", "vectors: this field is required (this store holds vectors)", "vectors")
    for i, text in enumerate(texts or []):
        if not isinstance(text, str) or (takes_text and (not text or text.isspace())):
            raise invalid(f"texts[{i}]", "must be a non-empty string")
        if len(text) > limits.max_text_chars:
            raise ApiError(422, "limit_exceeded", f"texts[{i}]: {len(text)} characters is over this server's limit of "
                                                  f"{limits.max_text_chars}", f"texts[{i}]")
    for i, title in enumerate(titles or []):
        if not isinstance(title, str):
            raise invalid(f"titles[{i}]", f"must be a string, got {type(title).__name__}")
    for i, meta in enumerate(metadata or []):
        if not isinstance(meta, dict):
            raise invalid(f"metadata[{i}]", f"must be a JSON object, got {type(meta).__name__}")
    mats = None if vectors is None else [matrix(v, f"vectors[{i}]", dim, limits.max_doc_tokens)
                                         for i, v in enumerate(vectors)]
    return AddRequest(ids, upsert, texts, titles, metadata, mats)


def delete_request(data: dict[str, Any], limits: Limits) -> list[str]:
    check_fields(data, {"ids"}, {"ids"})
    return ids_field(data, limits)


def json_safe(value: Any) -> Any:
    """Stats as JSON: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
