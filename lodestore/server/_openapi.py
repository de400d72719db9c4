"""The OpenAPI 3.1 document served at /openapi.json, written by hand to match lodestore/server/_app.py.

tests/server/test_openapi.py checks that its paths and methods are exactly the app's routes.
"""

from __future__ import annotations

from typing import Any

import lodestore


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "Malformed JSON"),
    "401": _json(_ref("Error"), "Missing or wrong API key (when the server has keys)"),
    "413": _json(_ref("Error"), "Request body over the limit"),
    "422": _json(_ref("Error"), "A field is missing, unknown, malformed or over a limit; `field` names it"),
    "503": _json(_ref("Error"), "Store not open, damaged (the message names the file and chunk) or writer busy"),
}

_MATRIX = {
    "description": "A (rows, dim) matrix: a list of rows of numbers, or base64 of little-endian float32 with its shape",
    "oneOf": [
        {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        {"type": "object", "required": ["b64", "shape"], "additionalProperties": False,
         "properties": {"b64": {"type": "string", "contentEncoding": "base64"},
                        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0},
                                  "minItems": 2, "maxItems": 2}}},
    ],
}

_SCHEMAS: dict[str, Any] = {
    "Matrix": _MATRIX,
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["status", "code", "message"],
        "properties": {"status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"},
                       "field": {"type": "string", "description": "the request field at fault, e.g. k or ids[3]"}}}}},
    "Hit": {"type": "object", "required": ["id", "score", "title", "text", "metadata"], "properties": {
        "id": {"type": "string"}, "score": {"type": "number", "description": "MaxSim score"},
        "title": {"type": "string"}, "text": {"type": "string"}, "metadata": {"type": "object"}}},
    "SearchRequest": {
        "type": "object", "additionalProperties": False,
        "description": "Exactly one of query, vectors or queries; optionally a metadata filter (where, params) "
                       "and, for text queries on a text index, a search mode (mode, fusion).",
        "properties": {
            "query": {"type": "string", "description": "one text query (text index only)"},
            "vectors": {**_ref("Matrix"), "description": "one query as token vectors (q_len, dim)"},
            "queries": {"type": "array", "description": "a batch: all text queries or all matrices",
                        "items": {"oneOf": [{"type": "string"}, _ref("Matrix")]}},
            "k": {"type": "integer", "minimum": 1, "default": 10},
            "where": {"type": "string", "description": "only documents whose metadata match, e.g. "
                                                       "\"year >= ? AND lang = ?\" (README: metadata filters)"},
            "params": {"type": "array", "description": "the values of where's '?' placeholders, in order",
                       "items": {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}},
            "mode": {"type": "string", "enum": ["maxsim", "bm25", "hybrid"], "default": "hybrid",
                     "description": "bm25 and hybrid: text queries on a text index (the default for text queries: "
                                    "hybrid; query vectors are searched by maxsim, their only mode)"},
            "fusion": {"type": "string", "enum": ["rrf", "score"], "default": "score",
                       "description": "how hybrid fuses the two rankings"},
        }},
    "SearchResponse": {"type": "object", "required": ["generation", "took_ms"], "properties": {
        "generation": {"type": "integer", "description": "the committed generation that answered"},
        "took_ms": {"type": "number", "description": "time spent searching in the server"},
        "hits": {"type": "array", "items": _ref("Hit"), "description": "single query form"},
        "results": {"type": "array", "description": "batch form, one entry per query",
                    "items": {"type": "object", "properties": {"hits": {"type": "array", "items": _ref("Hit")}}}}}},
    "AddRequest": {"type": "object", "required": ["ids"], "additionalProperties": False, "properties": {
        "ids": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "texts": {"type": "array", "items": {"type": "string"}, "description": "required by a text index"},
        "titles": {"type": "array", "items": {"type": "string"}},
        "metadata": {"type": "array", "items": {"type": "object"}},
        "vectors": {"type": "array", "items": _ref("Matrix"), "description": "required by a vector store"},
        "upsert": {"type": "boolean", "default": False}}},
    "DeleteRequest": {"type": "object", "required": ["ids"], "additionalProperties": False, "properties": {
        "ids": {"type": "array", "items": {"type": "string", "minLength": 1}}}},
    "Generation": {"type": "object", "required": ["generation"], "properties": {"generation": {"type": "integer"}}},
    "Stats": {"type": "object", "properties": {
        "kind": {"enum": ["text", "vectors"]}, "generation": {"type": "integer"}, "documents": {"type": "integer"},
        "deleted": {"type": "integer"}, "tokens": {"type": "integer"}, "segments": {"type": "integer"},
        "dim": {"type": "integer"}, "input_dim": {"type": "integer"}, "codec": {"type": "string"},
        "bytes_on_disk": {"type": "integer"},
        "memory": {"type": "object", "properties": {"rss_bytes": {"type": "integer"},
                                                    "searcher_resident_bytes": {"type": "integer"}}},
        "searcher": {"type": ["object", "null"], "description": "Searcher.stats() of the answering generation"},
        "server": {"type": "object"}, "limits": {"type": "object"}}},
}


def _write_op(summary: str, body: str | None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "security": [{}, {"bearer": []}],
                          "responses": {"200": _json(_ref("Generation"), "Committed: the new generation"),
                                        "403": _json(_ref("Error"), "The server is read-only"),
                                        "409": _json(_ref("Error"), "An id is already stored (without upsert)"),
                                        "404": _json(_ref("Error"), "An id to delete is not stored"), **_ERRORS}}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    return op


def openapi_document() -> dict[str, Any]:
    search = {"summary": "Top-k documents for one query or a batch, from one committed generation",
              "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SearchRequest")}}},
              "responses": {"200": _json(_ref("SearchResponse"), "Ranked hits"),
                            "504": _json(_ref("Error"), "The search ran past the timeout"), **_ERRORS}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "lodestore", "version": lodestore.__version__,
                 "description": "Search and update a lodestore store (text Index or vector Store) over HTTP."},
        "paths": {
            "/search": {"post": search},
            "/documents": {"post": _write_op("Add documents in one commit", "AddRequest"),
                           "delete": _write_op("Delete documents in one commit", "DeleteRequest")},
            "/compact": {"post": _write_op("Merge segments without the deleted documents (one commit)", None)},
            "/stats": {"get": {"summary": "Sizes, generation, memory and counters",
                               "responses": {"200": _json(_ref("Stats"), "Statistics"), **_ERRORS}}},
            "/health": {"get": {"summary": "The process is up", "security": [],
                                "responses": {"200": _json({"type": "object"}, "Up")}}},
            "/ready": {"get": {"summary": "The store is open and searchable", "security": [],
                               "responses": {"200": _json({"type": "object"}, "Ready"),
                                             "503": _json(_ref("Error"), "Not ready")}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [],
                                      "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}},
            "/": {"get": {"summary": "The search page", "security": [],
                          "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
        },
        "components": {"schemas": _SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "With --api-key-file: writes (or all "
                                                                     "endpoints, --protect all) need a key"}}},
    }
