"""Typed per-document metadata: checked at add time, held as numpy columns, stored as one array per segment.

A document's metadata is a dict of fields; a value is an int (int64), a float (finite
float64), a str, a bool, None (null; an absent field is null too) or a list of str
(tags). A field has one type in a store, recorded in the manifest's
settings["metadata_fields"] (FORMAT.md 8.2.2): ints go into a float field, anything
else that disagrees is a ValueError naming the document and field, before anything
is written.

In memory each field is a `Column` (what a filter evaluates over, store/_metadata_where.py):
  int / float / bool  values (N,) int64 / float64 / bool, null mask (N,) bool or None
  str                 codes (N,) int32 into `words` (sorted distinct strings), -1 = null
  tags                offsets (N+1,) int64 over codes (int32 into `words`), null mask or None
On disk a segment holds them as one UTF-8 JSON object in the small array `metadata`
(gzip + CRC32C chunks, read by store/_smallarray.py), checked field by field at load.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._errors import CorruptStoreError
from ._structure import check_csr

FIELD_TYPES = ("int", "float", "bool", "str", "tags")
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
# words of the filter grammar (store/_metadata_where.py): a field may not be called by one
RESERVED = frozenset({"and", "or", "not", "in", "is", "null", "like", "true", "false", "contains", "between"})
METADATA_ARRAY = "metadata"
SCHEMA_KEY = "metadata_fields"  # manifest settings key: {field: type}
METADATA_FEATURE = "metadata"  # the writer feature a store with metadata lists (FORMAT.md 6)
MAX_FIELDS = 1024
_INT64 = (-(1 << 63), (1 << 63) - 1)


def check_field_name(name: Any, where: str = "metadata") -> str:
    if not isinstance(name, str) or not FIELD_NAME.match(name) or name.lower() in RESERVED:
        raise ValueError(f"{where}: field name {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*, at most 64 "
                         f"characters, not one of {sorted(RESERVED)})")
    return name


def value_type(v: Any) -> str | None:
    """The metadata type of one value (None for null); ValueError for anything else."""
    if v is None:
        return None
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return "bool"
    if isinstance(v, (int, np.integer)):
        if not _INT64[0] <= int(v) <= _INT64[1]:
            raise ValueError(f"integer {v} is outside int64")
        return "int"
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(float(v)):
            raise ValueError(f"float {v} is not finite")
        return "float"
    if isinstance(v, str):
        _utf8(v)
        return "str"
    if isinstance(v, (list, tuple)):
        for t in v:
            if not isinstance(t, str):
                raise ValueError(f"a tag list holds {type(t).__name__} {t!r}; tags are strings")
            _utf8(t)
        return "tags"
    raise ValueError(f"{type(v).__name__} is not a metadata type (int, float, str, bool, None, list of str)")


def _utf8(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"string {s[:40]!r} is not encodable as UTF-8 ({e.reason})") from None


@dataclass
class Column:
    """One field over N documents (see the module docstring for the layout of each type)."""

    type: str
    values: np.ndarray
    null: np.ndarray | None = None
    words: list[str] | None = None
    offsets: np.ndarray | None = None

    @classmethod
    def nulls(cls, type_: str, n: int) -> "Column":
        if type_ == "str":
            return cls("str", np.full(n, -1, np.int32), None, [])
        if type_ == "tags":
            return cls("tags", np.zeros(0, np.int32), np.ones(n, bool), [], np.zeros(n + 1, np.int64))
        dtype = {"int": np.int64, "float": np.float64, "bool": bool}[type_]
        return cls(type_, np.zeros(n, dtype), np.ones(n, bool))

    def null_mask(self) -> np.ndarray:
        if self.type == "str":
            return self.values < 0
        n = len(self.offsets) - 1 if self.type == "tags" else len(self.values)
        return np.zeros(n, bool) if self.null is None else self.null

    @property
    def nbytes(self) -> int:
        words = sum(len(w) + 49 for w in self.words or ())  # a Python str object per distinct value
        return sum(a.nbytes for a in (self.values, self.null, self.offsets) if a is not None) + words

    def take(self, idx: np.ndarray) -> "Column":
        null = None if self.null is None else self.null[idx]
        if self.type != "tags":
            return Column(self.type, self.values[idx], null, self.words)
        starts, stops = self.offsets[idx], self.offsets[idx + 1]
        lens = stops - starts
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        flat = np.repeat(starts - offsets[:-1], lens) + np.arange(int(offsets[-1]))
        return Column("tags", self.values[flat], null, self.words, offsets)

    def value(self, i: int) -> Any:
        if self.type == "str":
            c = int(self.values[i])
            return None if c < 0 else self.words[c]
        if self.null is not None and self.null[i]:
            return None
        if self.type == "tags":
            return [self.words[c] for c in self.values[self.offsets[i]:self.offsets[i + 1]].tolist()]
        return self.values[i].item()


class MetadataColumns:
    """The metadata of N documents, one Column per field (a field missing from a document is null)."""

    def __init__(self, n: int, fields: dict[str, Column] | None = None):
        self.n = n
        self.fields = fields or {}

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.fields.values())

    def column(self, name: str, type_: str) -> Column:
        """The field's column, or an all-null one of `type_` when no document here has it."""
        col = self.fields.get(name)
        return col if col is not None else Column.nulls(type_, self.n)

    def take(self, idx: np.ndarray) -> "MetadataColumns":
        idx = np.asarray(idx, dtype=np.int64)
        return MetadataColumns(len(idx), {k: c.take(idx) for k, c in self.fields.items()})

    def rows(self, idx: Sequence[int]) -> list[dict[str, Any]]:
        """Documents `idx` as dicts of their non-null fields."""
        out = []
        for i in idx:
            d = {}
            for k, c in self.fields.items():
                v = c.value(int(i))
                if v is not None:
                    d[k] = v
            out.append(d)
        return out

    @staticmethod
    def concat(parts: list["MetadataColumns"]) -> "MetadataColumns":
        """Documents of `parts` one after another; a field some part lacks is null there."""
        types: dict[str, str] = {}
        for p in parts:
            for k, c in p.fields.items():
                types.setdefault(k, c.type)
        n = sum(p.n for p in parts)
        return MetadataColumns(n, {k: _concat([p.column(k, t) for p in parts], t) for k, t in types.items()})

    # ------------------------------------------------------------------ from user dicts
    @classmethod
    def from_dicts(cls, docs: Any, n_docs: int, schema: dict[str, str], ids: Sequence[str] | None = None
                   ) -> tuple["MetadataColumns", dict[str, str]]:
        """Check user metadata (one dict per document) -> (columns, the store's schema with new fields).

        ValueError names the document and field for: a wrong count, a non-dict, a bad field
        name, a value of no metadata type, or a field whose type disagrees with another
        document's or the store's (ints in a float field are floats).
        """
        if isinstance(docs, (dict, str, bytes)) or not isinstance(docs, Sequence):
            raise ValueError("metadata must be a list with one dict per document")
        if len(docs) != n_docs:
            raise ValueError(f"got {len(docs)} metadata entries for {n_docs} documents")

        def name(i: int) -> str:
            return f"document {ids[i]!r}" if ids is not None else f"metadata entry {i}"

        seen: dict[str, dict[str, int]] = {}  # field -> type -> first document
        for i, d in enumerate(docs):
            if not isinstance(d, dict):
                raise ValueError(f"{name(i)}: metadata is {type(d).__name__}, not a dict")
            for key, v in d.items():
                check_field_name(key, name(i))
                try:
                    t = value_type(v)
                except ValueError as e:
                    raise ValueError(f"{name(i)}: field {key!r}: {e}") from None
                if t is not None:
                    seen.setdefault(key, {}).setdefault(t, i)
        out = dict(schema)
        for key, found in seen.items():
            kinds = set(found) | ({schema[key]} if key in schema else set())
            if kinds == {"int", "float"} and schema.get(key) != "int":
                kinds = {"float"}
            if len(kinds) > 1:
                where = "; ".join(f"{t} in {name(i)}" for t, i in found.items())
                before = f" (the store holds it as {schema[key]})" if key in schema else ""
                raise ValueError(f"metadata field {key!r} has more than one type: {where}{before}")
            out[key] = kinds.pop()
        if len(out) > MAX_FIELDS:
            raise ValueError(f"a store holds at most {MAX_FIELDS} metadata fields, these documents make {len(out)}")
        fields = {key: _column(out[key], [d.get(key) for d in docs]) for key in seen}
        return cls(n_docs, fields), out

    # ------------------------------------------------------------------ on disk
    def encode(self) -> bytes:
        """The segment's `metadata` array content: UTF-8 JSON, one object per field (FORMAT.md 8.2.2)."""
        fields = {}
        for k, c in self.fields.items():
            f: dict[str, Any] = {"type": c.type}
            if c.type in ("str", "tags"):
                f["words"] = c.words
            if c.type == "tags":
                f["offsets"] = c.offsets.tolist()
            f["values"] = c.values.astype(np.int64).tolist() if c.type == "bool" else c.values.tolist()
            if c.type != "str" and c.null is not None and c.null.any():
                f["null"] = np.flatnonzero(c.null).tolist()
            fields[k] = f
        doc = {"format": 1, "documents": self.n, "fields": fields}
        return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes, n: int, schema: dict[str, str], where: object) -> "MetadataColumns":
        """Parse and check a segment's `metadata` array: every field in the schema, with its type, N long."""
        def bad(msg: str) -> CorruptStoreError:
            return CorruptStoreError(f"{where}: {msg}")

        try:
            doc = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise bad(f"metadata is not UTF-8 JSON ({str(e)[:100]})") from None
        if not isinstance(doc, dict) or doc.get("format") != 1 or type(doc.get("documents")) is not int \
                or doc["documents"] != n or not isinstance(doc.get("fields"), dict):
            raise bad(f"metadata is not a format-1 object of {n} documents")
        fields = {}
        for key, f in doc["fields"].items():
            if not isinstance(f, dict) or schema.get(key) is None or f.get("type") != schema[key]:
                raise bad(f"metadata field {key!r} is not in the manifest's metadata_fields with its type")
            try:
                fields[key] = _decode_column(f, n)
            except (ValueError, TypeError, OverflowError, CorruptStoreError) as e:
                raise bad(f"metadata field {key!r}: {e}") from None
        return cls(n, fields)


def _column(type_: str, values: list[Any]) -> Column:
    """A Column of `type_` from checked Python values (None = null)."""
    n = len(values)
    null = np.fromiter((v is None for v in values), bool, count=n)
    if type_ in ("int", "float", "bool"):
        dtype = {"int": np.int64, "float": np.float64, "bool": bool}[type_]
        fill = False if type_ == "bool" else 0
        arr = np.array([fill if v is None else v for v in values], dtype=dtype)
        return Column(type_, arr, null if null.any() else None)
    if type_ == "str":
        words = sorted({v for v in values if v is not None})
        pos = {w: i for i, w in enumerate(words)}
        return Column("str", np.array([-1 if v is None else pos[v] for v in values], np.int32), None, words)
    words = sorted({t for v in values if v is not None for t in v})
    pos = {w: i for i, w in enumerate(words)}
    lists = [[] if v is None else [pos[t] for t in v] for v in values]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    codes = np.fromiter((c for x in lists for c in x), np.int32, count=int(offsets[-1]))
    return Column("tags", codes, null if null.any() else None, words, offsets)


def _concat(cols: list[Column], type_: str) -> Column:
    nulls = [c.null_mask() for c in cols]
    null = np.concatenate(nulls) if cols else np.zeros(0, bool)
    null = null if null.any() else None
    if type_ in ("int", "float", "bool"):
        return Column(type_, np.concatenate([c.values for c in cols]), null)
    words = sorted(set().union(*[c.words for c in cols]))
    remapped = []
    for c in cols:
        table = np.searchsorted(np.array(words, dtype=object), np.array(c.words, dtype=object)).astype(np.int32) \
            if c.words else np.zeros(0, np.int32)
        codes = np.append(table, np.int32(-1))[c.values] if len(c.values) else c.values
        remapped.append(codes.astype(np.int32))
    if type_ == "str":
        return Column("str", np.concatenate(remapped), None, words)
    lens = np.concatenate([np.diff(c.offsets) for c in cols])
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return Column("tags", np.concatenate(remapped), null, words, offsets)


def _ints(values: Any, n: int | None, what: str) -> np.ndarray:
    if not isinstance(values, list) or n is not None and len(values) != n:
        raise ValueError(f"{what} is not a list of {n} integers")
    if any(type(v) is not int for v in values):
        raise ValueError(f"{what} holds a value that is not an integer")
    if not values:
        return np.zeros(0, np.int64)
    arr = np.array(values)
    if arr.dtype.kind != "i":
        raise ValueError(f"{what} holds an integer outside int64")
    return arr.astype(np.int64)


def _words(f: dict) -> list[str]:
    words = f.get("words")
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError("words is not a list of strings")
    if any(a >= b for a, b in zip(words, words[1:])):
        raise ValueError("words are not sorted and distinct")
    return words


def _decode_column(f: dict, n: int) -> Column:
    """One field's JSON object -> Column, every count and code checked against N and its dictionary."""
    t = f["type"]
    null = None
    if "null" in f:
        idx = _ints(f["null"], None, "null")
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise ValueError("a null index is outside [0, N)")
        null = np.zeros(n, bool)
        null[idx] = True
    if t == "float":
        vals = f.get("values")
        if not isinstance(vals, list) or len(vals) != n or any(type(v) not in (int, float) for v in vals):
            raise ValueError(f"values is not a list of {n} numbers")
        arr = np.array(vals, dtype=np.float64) if vals else np.zeros(0)
        if not np.isfinite(arr).all():
            raise ValueError("a value is not finite")
        return Column(t, arr, null)
    if t in ("int", "bool"):
        arr = _ints(f.get("values"), n, "values")
        if t == "bool":
            if len(arr) and (arr.min() < 0 or arr.max() > 1):
                raise ValueError("a bool value is not 0 or 1")
            arr = arr.astype(bool)
        return Column(t, arr, null)
    words = _words(f)
    if t == "str":
        codes = _ints(f.get("values"), n, "values")
        if len(codes) and (codes.min() < -1 or codes.max() >= len(words)):
            raise ValueError("a string code is outside its dictionary")
        return Column(t, codes.astype(np.int32), None, words)
    offsets = check_csr(_ints(f.get("offsets"), n + 1, "offsets"), n, None, "tags", "offsets")
    codes = _ints(f.get("values"), int(offsets[-1]), "values")
    if len(codes) and (codes.min() < 0 or codes.max() >= len(words)):
        raise ValueError("a tag code is outside its dictionary")
    return Column(t, codes.astype(np.int32), null, words, offsets)


def check_schema(schema: Any) -> dict[str, str]:
    """The manifest's settings.metadata_fields: {name: type}; ValueError when it is anything else."""
    if not isinstance(schema, dict) or len(schema) > MAX_FIELDS:
        raise ValueError("metadata_fields is not an object of at most 1024 fields")
    for k, t in schema.items():
        check_field_name(k, "metadata_fields")
        if t not in FIELD_TYPES:
            raise ValueError(f"metadata_fields: field {k!r} has unknown type {t!r}")
    return dict(schema)
