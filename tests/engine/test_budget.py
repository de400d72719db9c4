"""Placement rules of the memory budget (engine/_budget.py)."""

from __future__ import annotations

import pytest

from lodestore.engine._budget import AUTO_CACHE, AUTO_CACHE_NO_PREFETCH, AUTO_CODES, MIN_CACHE, parse_size, place

MB = 1 << 20


def test_auto_keeps_the_index_and_a_small_cache():
    p = place(parse_size("auto"), index_bytes=20 * MB, codes_bytes=10 * MB, residual_bytes=160 * MB)
    assert (p.name, p.codes_resident, p.residuals_resident, p.cache_bytes) == ("disk", False, False, AUTO_CACHE)
    assert p.budget == 20 * MB + AUTO_CACHE


def test_auto_keeps_small_per_token_codes():
    """Up to AUTO_CODES (4e6 tokens) the per-token ids stay in RAM: else each survivor costs a second read."""
    p = place("auto", index_bytes=20 * MB, codes_bytes=AUTO_CODES, residual_bytes=160 * MB)
    assert (p.name, p.codes_resident, p.residuals_resident) == ("codes-in-RAM", True, False)
    assert p.budget == 20 * MB + AUTO_CODES + AUTO_CACHE
    assert not place("auto", index_bytes=20 * MB, codes_bytes=AUTO_CODES + 1, residual_bytes=160 * MB).codes_resident


def test_auto_without_prefetch_keeps_no_cache():
    p = place("auto", index_bytes=20 * MB, codes_bytes=10 * MB, residual_bytes=160 * MB,
              auto_cache=AUTO_CACHE_NO_PREFETCH)
    assert (p.name, p.cache_bytes, p.budget) == ("disk", 0, 20 * MB)


def test_searcher_auto_cache_follows_prefetch(engine_store, monkeypatch):
    import lodestore
    from lodestore.engine import _budget

    with lodestore.Searcher(engine_store, memory_budget="auto") as small:
        assert small.placement.name == "all-in-RAM"  # the test store's rows (~3 MB) fit in SMALL_STORE
    monkeypatch.setattr(_budget, "SMALL_STORE", 0)
    monkeypatch.setattr(_budget, "AUTO_CODES", 0)
    with lodestore.Searcher(engine_store, memory_budget="auto") as off, \
            lodestore.Searcher(engine_store, memory_budget="auto", prefetch=True) as on:
        assert off.placement.name == on.placement.name == "disk"
        assert (off.placement.cache_bytes, on.placement.cache_bytes) == (AUTO_CACHE_NO_PREFETCH, AUTO_CACHE)


def test_auto_keeps_a_store_that_fits_in_that_all_in_ram():
    p = place("auto", index_bytes=1 * MB, codes_bytes=1 * MB, residual_bytes=2 * MB)
    assert p.name == "all-in-RAM"


@pytest.mark.parametrize("budget, name", [(None, "all-in-RAM"), (200 * MB, "all-in-RAM"),
                                          (40 * MB, "codes-in-RAM"), (25 * MB, "disk"), (0, "disk")])
def test_budgets_choose_placements_in_order(budget, name):
    p = place(budget, index_bytes=20 * MB, codes_bytes=10 * MB, residual_bytes=160 * MB)
    assert p.name == name
    if name != "all-in-RAM":
        assert MIN_CACHE <= p.cache_bytes <= 16 * MB


def test_parse_size_words():
    assert parse_size("Auto") == "auto" and parse_size("all") is None and parse_size("1.5GiB") == int(1.5 * (1 << 30))
    with pytest.raises(ValueError, match="'auto'"):
        parse_size("lots")
