"""Every check of what a caller hands the engine: Searcher options, queries, k, subsets.

Each raises ValueError naming the argument, before anything is opened, allocated or
read: a rejected call leaves the Searcher and its counters as they were.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lodestore.store import Store, as_numpy, normalize_rows

MAX_K = 100_000  # exact re-ranking decodes the best max(32, 2k) survivors: a larger k is a mistake, not a query


def _positive_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0


def check_options(nprobe: Any, ndocs: Any, probe_delta: Any, max_query_tokens: Any) -> None:
    """A Searcher's search options (None or "auto": the defaults engine/_settings.py picks)."""
    if nprobe is not None and not _positive_int(nprobe) or ndocs is not None and not _positive_int(ndocs):
        raise ValueError(f"nprobe and ndocs must be positive integers, got nprobe={nprobe!r}, ndocs={ndocs!r}")
    if not (isinstance(probe_delta, str) and probe_delta == "auto") and probe_delta is not None and not (
            isinstance(probe_delta, (int, float)) and not isinstance(probe_delta, bool) and 0 <= probe_delta <= 2):
        raise ValueError(f"probe_delta must be 'auto', None or a score difference in [0, 2], got {probe_delta!r}")
    if max_query_tokens is not None and not _positive_int(max_query_tokens):
        raise ValueError(f"max_query_tokens must be a positive integer, got {max_query_tokens!r}")


def check_read_hints(read_hints: Any) -> None:
    """True, False or "auto"."""
    if not (isinstance(read_hints, bool) or (isinstance(read_hints, str) and read_hints == "auto")):
        raise ValueError(f"read_hints must be True, False or 'auto', got {read_hints!r}")


def check_prefilter(prefilter: Any) -> None:
    """"auto", None (no cut) or a positive integer: candidates per survivor that reach centroid interaction."""
    if not (prefilter is None or (isinstance(prefilter, str) and prefilter == "auto") or _positive_int(prefilter)):
        raise ValueError(f"prefilter must be 'auto', None or a positive integer, got {prefilter!r}")


def check_k(k: Any) -> int:
    """k as an int: a positive integer, at most MAX_K."""
    if not _positive_int(k):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > MAX_K:
        raise ValueError(f"k must be at most {MAX_K}, got {k!r}")
    return int(k)


def check_subset(subset: Sequence[str] | None) -> list[str] | None:
    """The subset's ids as a list (None: no subset)."""
    if subset is None:
        return None
    if isinstance(subset, (str, bytes)):
        raise ValueError("subset must be a collection of document ids, not one string")
    return list(subset)


def split_queries(query: Any, dim: int) -> tuple[bool, list[np.ndarray]]:
    """(single, queries): one (q_len, dim) query, or a (batch, q_len, dim) array or list of them."""
    if isinstance(query, (list, tuple)):
        if not query:
            raise ValueError("empty list of queries")
        return False, [as_numpy(q) for q in query]
    a = as_numpy(query)
    if a.ndim == 2:
        return True, [a]
    if a.ndim == 3:
        if len(a) == 0:
            raise ValueError("empty batch of queries")
        return False, list(a)
    raise ValueError(f"query must be (q_len, {dim}) or (batch, q_len, {dim}), got shape {a.shape}")


def check_queries(store: Store, qs: list[np.ndarray], max_tokens: int | None = None) -> list[np.ndarray]:
    """Queries as the store holds vectors: checked (shape, dtype, values, at most max_tokens tokens each,
    all before any is converted), unit rows, projected when the store reduces dims."""
    dim = store.input_dim
    for i, q in enumerate(qs):
        if q.ndim != 2 or q.shape[1] != dim:
            raise ValueError(f"query {i}: expected (q_len, {dim}), got shape {q.shape}")
        if q.shape[0] == 0:
            raise ValueError(f"query {i}: empty query (no token vectors)")
        if max_tokens is not None and q.shape[0] > max_tokens:
            raise ValueError(f"query {i}: {q.shape[0]} token vectors, more than max_query_tokens={max_tokens}")
        if not np.issubdtype(q.dtype, np.floating):
            raise ValueError(f"query {i}: expected float16/32/64 values, got {q.dtype}")
    return [store.project(normalize_query(q, f"query {i}")) for i, q in enumerate(qs)]


def normalize_query(q: np.ndarray, what: str = "query") -> np.ndarray:
    """A (q_len, dim) query as unit-norm float32 rows, normalized as documents are (lodestore.store
    normalize_rows: finiteness checked in the input's dtype, scaled before the cast); zero rows stay zero."""
    return normalize_rows(q, what, lambda problem, row: f"{what}: token {row} is {problem}", zero_rows="keep")
