"""The where= compiler (store/_metadata_where.py) against SQLite as the oracle: random metadata, random
expressions, the same documents must match (SQL NULL semantics included); and every bad filter is a
ValueError naming the problem, while injection attempts through params are plain values."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lodestore.store import MetadataColumns, compile_where

SCHEMA = {"i": "int", "f": "float", "s": "str", "b": "bool", "t": "tags"}
WORDS = ["", "a", "ab", "b", "a%b", "it's", "_x", "é", "Z", "a b"]

ints = st.integers(-5, 5)
floats = st.sampled_from([-2.5, -1.0, 0.0, 0.5, 1.0, 3.25, 1e-05])
words = st.sampled_from(WORDS)
VALUES = {"i": ints, "f": st.one_of(floats, ints), "s": words, "b": st.booleans(), "t": words}


@st.composite
def documents(draw):
    n = draw(st.integers(1, 25))
    out = []
    for _ in range(n):
        d = {}
        for field, values in (("i", ints), ("f", floats), ("s", words), ("b", st.booleans())):
            if draw(st.booleans()):
                d[field] = draw(st.one_of(st.none(), values))
        if draw(st.booleans()):
            d["t"] = draw(st.one_of(st.none(), st.lists(words, max_size=3)))
        out.append(d)
    return out


def literal(v) -> str:
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(v)


@st.composite
def operand(draw, field):
    """(our text, sqlite text, params): a '?' or a literal of the field's type."""
    v = draw(VALUES[field])
    if draw(st.booleans()):
        return "?", "?", [v]
    text = literal(v)
    return text, text, []


@st.composite
def predicate(draw):
    field = draw(st.sampled_from(sorted(SCHEMA)))
    if field == "t":
        kind = draw(st.sampled_from(["contains", "null"]))
        if kind == "null":
            neg = draw(st.booleans())
            text = f"t IS {'NOT ' if neg else ''}NULL"
            return text, text, []
        ours, lite, p = draw(operand("t"))
        return (f"t CONTAINS {ours}",
                f"(CASE WHEN t IS NULL THEN NULL ELSE EXISTS (SELECT 1 FROM json_each(t) WHERE value = {lite}) END)", p)
    kinds = ["cmp", "in", "null"] + (["between"] if field != "b" else ["bare"]) + (["like"] if field == "s" else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "null":
        text = f"{field} IS {'NOT ' if draw(st.booleans()) else ''}NULL"
        return text, text, []
    if kind == "bare":
        return "b", "b", []
    neg = "NOT " if draw(st.booleans()) else ""
    if kind == "cmp":
        ops = ["=", "!=", "<>"] + (["<", "<=", ">", ">="] if field != "b" else [])
        op = draw(st.sampled_from(ops))
        ours, lite, p = draw(operand(field))
        return f"{field} {op} {ours}", f"{field} {op} {lite}", p
    if kind == "in":
        parts = draw(st.lists(operand(field), min_size=1, max_size=3))
        return (f"{field} {neg}IN ({', '.join(x[0] for x in parts)})", f"{field} {neg}IN ({', '.join(x[1] for x in parts)})",
                [v for x in parts for v in x[2]])
    if kind == "like":
        ours, lite, p = draw(operand("s"))
        return f"s {neg}LIKE {ours}", f"s {neg}LIKE {lite}", p
    lo, hi = draw(operand(field)), draw(operand(field))
    return (f"{field} {neg}BETWEEN {lo[0]} AND {hi[0]}", f"{field} {neg}BETWEEN {lo[1]} AND {hi[1]}", lo[2] + hi[2])


def expressions():
    def extend(inner):
        both = st.tuples(inner, inner, st.sampled_from(["AND", "OR"]))
        return st.one_of(
            both.map(lambda x: (f"({x[0][0]}) {x[2]} ({x[1][0]})", f"({x[0][1]}) {x[2]} ({x[1][1]})", x[0][2] + x[1][2])),
            inner.map(lambda x: (f"NOT ({x[0]})", f"NOT ({x[1]})", x[2])),
        )
    return st.recursive(predicate(), extend, max_leaves=6)


def sqlite_matches(docs: list[dict], where: str, params: list) -> list[int]:
    db = sqlite3.connect(":memory:")
    db.execute("PRAGMA case_sensitive_like = ON")
    db.execute("CREATE TABLE m (i INTEGER, f REAL, s TEXT, b INTEGER, t TEXT)")
    db.executemany("INSERT INTO m (rowid, i, f, s, b, t) VALUES (?, ?, ?, ?, ?, ?)",
                   [(n, d.get("i"), d.get("f"), d.get("s"), d.get("b"),
                     None if d.get("t") is None else json.dumps(d["t"])) for n, d in enumerate(docs)])
    rows = db.execute(f"SELECT rowid FROM m AS t0 WHERE {where.replace('json_each(t)', 'json_each(t0.t)')} "
                      "ORDER BY rowid", params).fetchall()
    db.close()
    return [r[0] for r in rows]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=documents(), expr=expressions(), split=st.integers(0, 25))
def test_filter_matches_sqlite(docs, expr, split):
    ours, lite, params = expr
    cols, schema = MetadataColumns.from_dicts(docs, len(docs), SCHEMA)
    assert schema == SCHEMA
    # through the on-disk form, and split into two parts joined again (as compaction does)
    split = min(split, len(docs))
    parts = [MetadataColumns.decode(c.encode(), c.n, SCHEMA, "test")
             for c in (cols.take(np.arange(split)), cols.take(np.arange(split, len(docs))))]
    joined = MetadataColumns.concat(parts)
    assert joined.rows(range(len(docs))) == cols.rows(range(len(docs)))
    mask = compile_where(ours, params, SCHEMA).mask(joined)
    assert np.flatnonzero(mask).tolist() == sqlite_matches(docs, lite, params), (ours, params)


@pytest.mark.parametrize("where, params, message", [
    ("", (), "empty expression"),
    ("i >", (), "expected a value"),
    ("i = 1 AND", (), "expected a field name"),
    ("(i = 1", (), "expected ')'"),
    ("i = 1)", (), "unexpected ')'"),
    ("i = 1 j = 2", (), "unexpected 'j'"),
    ("i ; DROP TABLE m", (), "unexpected character ';'"),
    ("nope = 1", (), "unknown metadata field 'nope' (the store's fields: b, f, i, s, t)"),
    ("i = ?", (), "more '?' placeholders than the 0 params given"),
    ("i = ?", (1, 2), "1 '?' placeholders but 2 params"),
    ("i = ?", ("1",), "param 1 for 'i' is str '1', but 'i' is a int field"),
    ("s = ?", (1,), "param 1 for 's' is int 1"),
    ("b < TRUE", (), "< needs an int, float or str field; 'b' is bool"),
    ("t = 'a'", (), "'t' is a tags field: test membership with 't CONTAINS ?'"),
    ("s CONTAINS 'a'", (), "CONTAINS needs a tags field"),
    ("i LIKE 'a'", (), "LIKE needs a str field"),
    ("i = ?", (None,), "is None; test for null with 'i IS NULL'"),
    ("i = ?", ([1],), "param 1 for 'i'"),
    ("f = ?", (float("inf"),), "not finite"),
    ("NOT " * 100 + "b", (), "nested deeper than 64"),
    ("(" * 100 + "b" + ")" * 100, (), "nested deeper than 64"),
])
def test_bad_filters_are_value_errors_naming_the_problem(where, params, message):
    with pytest.raises(ValueError) as e:
        compile_where(where, params, SCHEMA)
    assert message in str(e.value)


def test_params_must_be_a_sequence_and_where_a_string():
    with pytest.raises(ValueError, match="params must be a list or tuple"):
        compile_where("s = ?", "a", SCHEMA)
    with pytest.raises(ValueError, match="where must be a string"):
        compile_where(b"i = 1", (), SCHEMA)


@pytest.mark.parametrize("attack", ["en' OR '1'='1", "'; DROP TABLE docs; --", "x\" OR 1=1 --", "%", "_",
                                    ") OR (1=1", "? OR 1=1"])
def test_injection_through_params_is_a_plain_value(attack):
    docs = [{"s": "en"}, {"s": attack}, {"s": "fr"}]
    cols, schema = MetadataColumns.from_dicts(docs, 3, {})
    assert np.flatnonzero(compile_where("s = ?", (attack,), schema).mask(cols)).tolist() == [1]
    assert np.flatnonzero(compile_where("s != ?", (attack,), schema).mask(cols)).tolist() == [0, 2]
