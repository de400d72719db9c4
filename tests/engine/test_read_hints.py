"""Kernel read hints (Searcher read_hints, engine/_rows.py HintPolicy): the same answers with or without
them, hints given for exactly the rows read, and an "auto" policy that follows where the rows come from."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lodestore.engine import Searcher
from lodestore.engine._rows import HintPolicy


def _evict(path) -> None:
    for dirpath, _d, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


@pytest.mark.parametrize("budget", [0])  # 0: every row read from the store files
def test_hints_change_no_answer_and_every_hinted_run_is_read(engine_store_path, engine_queries, budget):
    results, stats = {}, {}
    for hints in (False, True, "auto"):
        with Searcher(engine_store_path, memory_budget=budget, read_hints=hints) as s:
            _evict(engine_store_path)
            results[hints] = s.search(engine_queries[:12], k=10)
            stats[hints] = s.stats()
    assert results[True] == results[False] == results["auto"]  # ids and scores, bit for bit
    assert stats[False]["read_hints"] == 0
    assert stats[True]["read_hints"] > 0 and stats[True]["read_hints_on"]
    assert stats[True]["bytes_read"] == stats[False]["bytes_read"]  # hints move reads earlier, never add any
    assert 0 <= stats[True]["read_hit_rate"] <= 1 and stats[True]["read_waits"] <= stats[True]["read_calls"]


def test_no_hints_when_rows_are_resident(engine_store_path, engine_queries):
    with Searcher(engine_store_path, memory_budget="all", read_hints=True) as s:
        s.search(engine_queries[:4], k=10)
        assert s.stats()["read_hints"] == 0


def test_bad_read_hints_is_refused_before_opening(tmp_path):
    with pytest.raises(ValueError, match="read_hints must be True, False or 'auto'"):
        Searcher(tmp_path / "missing", read_hints="sometimes")


def test_auto_policy_follows_the_share_of_rows_read_from_the_device():
    p = HintPolicy("auto")
    if not p.auto:
        pytest.skip("no /proc/self/io here: auto means always on")
    assert p.on  # a Searcher's first queries are the coldest
    for _ in range(40):  # everything from the page cache: hints are wasted calls
        p.observe(0, 1 << 20)
    assert not p.on
    for _ in range(40):  # half of it from the device again
        p.observe(1 << 19, 1 << 20)
    assert p.on
    p.observe(123, 0)  # a group that read no rows (all resident) decides nothing
    assert p.on
    assert HintPolicy(True).on and not HintPolicy(False).on and not HintPolicy(False).auto


def test_auto_policy_turns_hints_off_on_a_cached_store(engine_store_path, engine_queries):
    with Searcher(engine_store_path, memory_budget=0, read_hints="auto") as s:
        if not s.rows.policy.auto:
            pytest.skip("no /proc/self/io here")
        for q in np.concatenate([engine_queries] * 4):  # the store is small: cached after the first queries
            s.search(q, k=10)
        assert not s.stats()["read_hints_on"]
