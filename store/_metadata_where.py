"""Metadata filters: a restricted SQL boolean expression compiled to numpy operations over the columns.

    year >= ? AND lang = ?          with params (2019, "en")
    (kind IN ('a', 'b') OR score < 0.5) AND NOT draft
    title LIKE 'intro%' AND tags CONTAINS ? AND author IS NOT NULL

Grammar (keywords in any case; `?` takes the next parameter; literals: integers,
decimals, 'single-quoted strings' with '' for a quote, TRUE, FALSE):

    expr      := term (OR term)*
    term      := factor (AND factor)*
    factor    := NOT factor | '(' expr ')' | predicate
    predicate := field (= | == | != | <> | < | <= | > | >=) value
               | field [NOT] IN '(' value (',' value)* ')'
               | field [NOT] BETWEEN value AND value
               | field [NOT] LIKE value            (str fields; % any run, _ one character; case-sensitive)
               | field CONTAINS value              (tags fields: the list holds the string)
               | field IS [NOT] NULL
               | field                            (bool fields: field = TRUE)

Why not SQLite: measured in docs/BENCHMARKS.md ("Metadata filters: choosing the evaluator").
Nothing here builds SQL: user text is parsed by this module only, and parameters are
values, never text to parse. Every problem (syntax, unknown field, a value of the wrong
type for its field, wrong parameter count) is a ValueError naming it, raised by
`compile_where` before any column is touched. NULL follows SQL: a comparison with null
is unknown, NOT unknown is unknown, and only documents whose expression is true match.
"""

from __future__ import annotations

import bisect
import operator
import re
from typing import Any, Sequence

import numpy as np

from ._metadata import Column, MetadataColumns, value_type

MAX_WHERE_CHARS = 10_000
MAX_DEPTH = 64
_TOKEN = re.compile(r"""\s*(?:(?P<num>\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?)
    |(?P<str>'(?:[^']|'')*')|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op><=|>=|<>|!=|==|=|<|>|\(|\)|,|\?|-))""", re.X)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "like", "true", "false", "contains", "between"}
_CMP = {"=": operator.eq, "==": operator.eq, "!=": operator.ne, "<>": operator.ne,
        "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_ORDER_TYPES = ("int", "float", "str")


def _tokens(text: str) -> list[tuple[str, Any, int]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            at = len(text) - len(text[pos:].lstrip())
            raise ValueError(f"where: unexpected character {text[at]!r} at position {at}")
        kind = m.lastgroup
        val = m.group(kind)
        start = m.start(kind)
        if kind == "name" and val.lower() in _KEYWORDS:
            kind, val = "kw", val.lower()
        elif kind == "num":
            val = float(val) if any(c in val for c in ".eE") else int(val)
        elif kind == "str":
            val = val[1:-1].replace("''", "'")
        out.append((kind, val, start))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over the tokens; builds a tree of tuples, checking fields and types as it goes."""

    def __init__(self, text: str, params: Sequence[Any], schema: dict[str, str]):
        self.toks, self.i, self.params, self.used, self.schema = _tokens(text), 0, list(params), 0, schema

    def peek(self, kind: str | None = None, val: Any = None) -> bool:
        if self.i >= len(self.toks):
            return False
        k, v, _ = self.toks[self.i]
        return (kind is None or k == kind) and (val is None or v == val)

    def take(self, kind: str, val: Any = None, what: str = "") -> Any:
        if not self.peek(kind, val):
            got = f"{self.toks[self.i][1]!r} at position {self.toks[self.i][2]}" if self.i < len(self.toks) else "the end"
            raise ValueError(f"where: expected {what or val or kind}, got {got}")
        self.i += 1
        return self.toks[self.i - 1][1]

    def parse(self) -> tuple:
        if not self.toks:
            raise ValueError("where: empty expression")
        tree = self.expr(0)
        if self.i < len(self.toks):
            _, v, at = self.toks[self.i]
            raise ValueError(f"where: unexpected {v!r} at position {at}")
        if self.used != len(self.params):
            raise ValueError(f"where: the expression has {self.used} '?' placeholders but {len(self.params)} "
                             "params were given")
        return tree

    def expr(self, depth: int) -> tuple:
        if depth > MAX_DEPTH:
            raise ValueError(f"where: nested deeper than {MAX_DEPTH}")
        node = self.term(depth)
        while self.peek("kw", "or"):
            self.i += 1
            node = ("or", node, self.term(depth))
        return node

    def term(self, depth: int) -> tuple:
        node = self.factor(depth)
        while self.peek("kw", "and"):
            self.i += 1
            node = ("and", node, self.factor(depth))
        return node

    def factor(self, depth: int) -> tuple:
        if depth > MAX_DEPTH:
            raise ValueError(f"where: nested deeper than {MAX_DEPTH}")
        if self.peek("kw", "not"):
            self.i += 1
            return ("not", self.factor(depth + 1))
        if self.peek("op", "("):
            self.i += 1
            node = self.expr(depth + 1)
            self.take("op", ")", "')'")
            return node
        return self.predicate()

    def value(self, field: str, type_: str, op: str) -> Any:
        if self.peek("op", "?"):
            self.i += 1
            if self.used >= len(self.params):
                raise ValueError(f"where: more '?' placeholders than the {len(self.params)} params given")
            v = self.params[self.used]
            self.used += 1
            what = f"param {self.used}"
        elif self.peek("op", "-"):
            self.i += 1
            v = -self.take("num", what="a number after '-'")
            what = "literal"
        elif self.peek("num") or self.peek("str"):
            v = self.toks[self.i][1]
            self.i += 1
            what = "literal"
        elif self.peek("kw", "true") or self.peek("kw", "false"):
            v = self.take("kw") == "true"
            what = "literal"
        else:
            self.take("value", what="a value ('?', a number, a 'string', TRUE or FALSE)")
        try:
            vt = value_type(v)
        except ValueError as e:
            raise ValueError(f"where: {what} for {field!r}: {e}") from None
        if vt is None:
            raise ValueError(f"where: {what} for {field!r} is None; test for null with '{field} IS NULL'")
        ok = {"int": ("int", "float"), "float": ("int", "float"), "str": ("str",), "bool": ("bool",),
              "tags": ("str",)}[type_]
        if vt not in ok:
            raise ValueError(f"where: {what} for {field!r} is {type(v).__name__} {v!r}, but {field!r} is a "
                             f"{type_} field ({op})")
        return v

    def predicate(self) -> tuple:
        field = self.take("name", what="a field name")
        if field not in self.schema:
            known = ", ".join(sorted(self.schema)) or "none"
            raise ValueError(f"where: unknown metadata field {field!r} (the store's fields: {known})")
        t = self.schema[field]
        negate = False
        if self.peek("kw", "is"):
            self.i += 1
            negate = bool(self.peek("kw", "not")) and self.take("kw") == "not"
            self.take("kw", "null", "NULL")
            return ("isnull", field, negate)
        if self.peek("kw", "not"):
            self.i += 1
            negate = True
            if not (self.peek("kw", "in") or self.peek("kw", "like") or self.peek("kw", "between")):
                self.take("kw", what="IN, LIKE or BETWEEN after NOT")
        if self.peek("kw", "in"):
            self.i += 1
            self._no_tags(field, t, "IN")
            self.take("op", "(", "'('")
            values = [self.value(field, t, "IN")]
            while self.peek("op", ","):
                self.i += 1
                values.append(self.value(field, t, "IN"))
            self.take("op", ")", "')'")
            return _maybe_not(("in", field, values), negate)
        if self.peek("kw", "between"):
            self.i += 1
            self._ordered(field, t, "BETWEEN")
            lo = self.value(field, t, "BETWEEN")
            self.take("kw", "and", "AND")
            hi = self.value(field, t, "BETWEEN")
            return _maybe_not(("and", ("cmp", field, ">=", lo), ("cmp", field, "<=", hi)), negate)
        if self.peek("kw", "like"):
            self.i += 1
            if t != "str":
                raise ValueError(f"where: LIKE needs a str field; {field!r} is {t}")
            return _maybe_not(("like", field, _like_regex(self.value(field, t, "LIKE"))), negate)
        if self.peek("kw", "contains"):
            self.i += 1
            if t != "tags":
                raise ValueError(f"where: CONTAINS needs a tags field; {field!r} is {t}")
            return ("contains", field, self.value(field, t, "CONTAINS"))
        if self.peek("op") and self.toks[self.i][1] in _CMP:
            op = self.take("op")
            self._no_tags(field, t, op)
            if op not in ("=", "==", "!=", "<>"):
                self._ordered(field, t, op)
            return ("cmp", field, op, self.value(field, t, op))
        if t == "bool":
            return ("cmp", field, "=", True)
        self.take("op", what=f"an operator after {field!r}")
        raise AssertionError("unreachable")

    @staticmethod
    def _no_tags(field: str, t: str, op: str) -> None:
        if t == "tags":
            raise ValueError(f"where: {field!r} is a tags field: test membership with '{field} CONTAINS ?', not {op}")

    @staticmethod
    def _ordered(field: str, t: str, op: str) -> None:
        if t not in _ORDER_TYPES:
            raise ValueError(f"where: {op} needs an int, float or str field; {field!r} is {t}")


def _maybe_not(node: tuple, negate: bool) -> tuple:
    return ("not", node) if negate else node


def _like_regex(pattern: str) -> re.Pattern:
    parts = [".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.S)


class Where:
    """A compiled filter: `mask(columns)` -> bool (N,) of the documents it matches."""

    def __init__(self, text: str, tree: tuple, schema: dict[str, str]):
        self.text, self.tree, self.schema = text, tree, schema

    def fields(self) -> set[str]:
        out: set[str] = set()

        def walk(node: tuple) -> None:
            if node[0] in ("and", "or"):
                walk(node[1]), walk(node[2])
            elif node[0] == "not":
                walk(node[1])
            else:
                out.add(node[1])
        walk(self.tree)
        return out

    def mask(self, cols: MetadataColumns) -> np.ndarray:
        true, _ = self._eval(self.tree, cols)
        return true

    def _eval(self, node: tuple, cols: MetadataColumns) -> tuple[np.ndarray, np.ndarray]:
        """(known true, known false) masks; neither = unknown (SQL NULL)."""
        op = node[0]
        if op in ("and", "or"):
            t1, f1 = self._eval(node[1], cols)
            t2, f2 = self._eval(node[2], cols)
            return (t1 & t2, f1 | f2) if op == "and" else (t1 | t2, f1 & f2)
        if op == "not":
            t, f = self._eval(node[1], cols)
            return f, t
        col = cols.column(node[1], self.schema[node[1]])
        if op == "isnull":
            null = col.null_mask()
            return (~null, null) if node[2] else (null, ~null)
        known = ~col.null_mask()
        hit = _predicate(col, node)
        return hit & known, ~hit & known


def _predicate(col: Column, node: tuple) -> np.ndarray:
    """The predicate's value where the field is not null (anything where it is)."""
    op = node[0]
    if col.type == "str":
        return _str_predicate(col, node)
    if op == "contains":
        i = bisect.bisect_left(col.words, node[2])
        n = len(col.offsets) - 1
        out = np.zeros(n, bool)
        if i < len(col.words) and col.words[i] == node[2]:
            pos = np.flatnonzero(col.values == i)
            out[np.searchsorted(col.offsets, pos, side="right") - 1] = True
        return out
    if op == "in":
        return np.isin(col.values, np.asarray(node[2]))
    return _CMP[node[2]](col.values, node[3])


def _str_predicate(col: Column, node: tuple) -> np.ndarray:
    """str fields compare through their sorted dictionary: a code range or a table lookup, never per document."""
    words, codes = col.words, col.values
    if node[0] == "like":
        table = np.fromiter((node[2].fullmatch(w) is not None for w in words), bool, count=len(words))
        return np.append(table, False)[codes]
    if node[0] == "in":
        table = np.zeros(len(words) + 1, dtype=bool)  # the last slot answers code -1 (null)
        table[[i for v in node[2] for i in [bisect.bisect_left(words, v)] if i < len(words) and words[i] == v]] = True
        return table[codes]
    op, v = node[2], node[3]
    lo, hi = bisect.bisect_left(words, v), bisect.bisect_right(words, v)
    if op in ("=", "=="):
        return (codes >= lo) & (codes < hi)
    if op in ("!=", "<>"):
        return (codes < lo) | (codes >= hi)
    return {"<": codes < lo, "<=": codes < hi, ">": codes >= hi, ">=": codes >= lo}[op]


def compile_where(where: str, params: Sequence[Any] | None, schema: dict[str, str]) -> Where:
    """Parse and check `where` against the store's fields {name: type} with its `params` -> Where.

    ValueError (naming the problem) for a malformed expression, an unknown field, a
    parameter count that differs from the '?' count, or a value whose type does not fit its field.
    """
    if not isinstance(where, str):
        raise ValueError(f"where must be a string, got {type(where).__name__}")
    if len(where) > MAX_WHERE_CHARS:
        raise ValueError(f"where is {len(where)} characters; at most {MAX_WHERE_CHARS}")
    if params is None:
        params = ()
    if isinstance(params, (str, bytes, dict)) or not isinstance(params, Sequence):
        raise ValueError("params must be a list or tuple of values, one per '?'")
    return Where(where, _Parser(where, params, schema).parse(), dict(schema))
