"""Memory budget: parse "256MB"-style sizes and decide what stays resident."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, asdict

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1024, "m": 1e6, "mb": 1e6, "mib": 1 << 20,
          "g": 1e9, "gb": 1e9, "gib": 1 << 30}
MIN_CACHE = 1 << 20
AUTO = "auto"
AUTO_CACHE = 4 << 20  # the cache "auto" adds with prefetch on: room for ~2 x the survivors' rows read ahead
SMALL_STORE = 4 << 20  # "auto" keeps a store whose token rows fit in this all in RAM
AUTO_CODES = 8 << 20  # "auto" keeps per-token centroid ids up to this (4e6 tokens) resident: reading them costs a
                      # second read call per survivor (docs/BENCHMARKS.md 3.3)
AUTO_CACHE_NO_PREFETCH = 0  # without prefetch rows are read through, uncached: a cache of earlier queries'
                            # rows rarely hit (docs/BENCHMARKS.md 2.0a); the OS page cache serves repeats


def parse_size(value: int | float | str | None) -> int | str | None:
    """Bytes from 123, "256MB", "1.5GiB"; None or "all" means unlimited (everything resident);
    "auto" is returned as is (see `place`)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"memory budget must be >= 0, got {value}")
        return int(value)
    if isinstance(value, str):
        s = value.strip().lower().replace(" ", "")
        if s in ("all", "all-in-ram", "unlimited"):
            return None
        if s == AUTO:
            return AUTO
        m = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", s)
        if m and m.group(2) in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"cannot parse memory budget {value!r}: use bytes, a size like '64MB' or '1GiB', 'auto' or 'all'")


@dataclass(frozen=True)
class Placement:
    """What the engine keeps in RAM (the rest is read from disk per query through the cache)."""

    budget: int | None
    index_bytes: int        # the index in RAM: centroids, deletion masks; and unless paged, the rest below
    codes_resident: bool    # per-token centroid ids (needed for centroid interaction)
    residuals_resident: bool
    cache_bytes: int        # prefetch cache for token rows read from disk
    index_paged: bool = False  # inverted lists, documents' centroid ids, offsets, id table: memory-mapped

    @property
    def name(self) -> str:
        if self.index_paged:
            return "index-paged"
        if self.residuals_resident and self.codes_resident:
            return "all-in-RAM"
        return "codes-in-RAM" if self.codes_resident else "disk"

    def to_dict(self) -> dict:
        return dict(asdict(self), name=self.name)


def place(budget: int | str | None, index_bytes: int, codes_bytes: int, residual_bytes: int,
          max_cache: int = 16 << 20, auto_cache: int = AUTO_CACHE, pageable_bytes: int = 0) -> Placement:
    """Fit the budget: the index; everything if it fits; then codes; the rest becomes cache.

    "auto" is what candidate generation needs (the index: centroids, inverted
    lists and each document's distinct centroid ids) plus `auto_cache` (the
    Searcher passes 4 MB with prefetch on, none without); token rows are read
    for the survivors only, unless they fit in 4 MB (then everything is
    resident); the per-token codes are resident up to AUTO_CODES (8 MB, 4e6
    tokens) and read with the rows beyond: the trade of memory for latency
    this makes is measured in docs/BENCHMARKS.md 2.0a (1e7 tokens) and 3.3
    (1.2e6 tokens).
    A budget below the index plus a 1 MB cache pages the `pageable_bytes` of it (the inverted
    lists, each document's centroid ids, their offsets and the id table: engine/_paged.py) and keeps
    the rest (centroids, deletion masks) in RAM; a budget below even that gets that, with a warning
    naming the smallest budget the store can be searched with. What paging costs: docs/BENCHMARKS.md C18.
    The cache is capped at `max_cache`: past a few hundred candidate documents
    per query a bigger cache buys nothing on a warm page cache.
    """
    if budget == AUTO:
        if codes_bytes + residual_bytes <= SMALL_STORE:  # its rows cost no more than a cache: keep them
            return Placement(index_bytes + AUTO_CACHE, index_bytes, True, True, 0)
        codes = codes_bytes <= AUTO_CODES
        return Placement(index_bytes + codes * codes_bytes + auto_cache, index_bytes, codes, False, auto_cache)
    if budget is None or budget >= index_bytes + codes_bytes + residual_bytes:
        return Placement(budget, index_bytes, True, True, 0)
    paged = budget < index_bytes + MIN_CACHE and pageable_bytes > 0
    if paged:
        index_bytes -= pageable_bytes
        if budget < index_bytes + MIN_CACHE:
            warnings.warn(f"memory budget {budget:,} bytes is below the {index_bytes + MIN_CACHE:,} bytes searching this "
                          f"store needs in RAM (its centroids and deletion masks, {index_bytes:,} bytes, and a "
                          f"{MIN_CACHE:,}-byte row cache; the rest of the index is paged): using that", stacklevel=4)
    left = budget - index_bytes
    codes = left >= codes_bytes + 2 * MIN_CACHE
    if codes:
        left -= codes_bytes
    return Placement(budget, index_bytes, codes, False, int(min(max(left, MIN_CACHE), max_cache)), paged)
