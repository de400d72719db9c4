"""One query spread over threads (engine/_parallel.py): same answers, real parallelism, errors surface."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import lodestore
from engine import _maxsim, _searcher
from engine._parallel import Workers, default_threads


def test_map_keeps_order_and_runs_pieces_at_the_same_time():
    w = Workers(2)
    barrier = threading.Barrier(2, timeout=10)  # breaks (and the test fails) unless 2 threads meet
    threads_seen = set()

    def piece(i: int) -> int:
        threads_seen.add(threading.get_ident())
        if i < 2:
            barrier.wait()
        return i * i

    try:
        assert w.map(piece, 9) == [i * i for i in range(9)]
        assert len(threads_seen) == 2
    finally:
        w.close()


def test_map_raises_the_first_error_and_stops_taking_pieces():
    w = Workers(2)
    done = []

    def piece(i: int) -> int:
        if i == 3:
            raise KeyError("piece 3")
        done.append(i)
        return i

    try:
        with pytest.raises(KeyError, match="piece 3"):
            w.map(piece, 1000)
        assert len(done) < 999
    finally:
        w.close()


def test_one_thread_runs_in_the_caller():
    w = Workers(1)
    assert w.map(lambda i: threading.get_ident(), 3) == [threading.get_ident()] * 3
    w.close()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        Workers(bad)


def test_default_is_at_most_two():
    assert 1 <= default_threads() <= 2


@pytest.mark.parametrize("budget", ["auto", "all"])
def test_threads_give_bit_identical_hits(engine_store, engine_queries, budget, monkeypatch):
    """Small pieces, so the test store splits into many (centroid blocks, interaction slices, chunks)."""
    monkeypatch.setattr(_searcher, "CENTROID_BLOCK", 40)
    monkeypatch.setattr(_maxsim, "CI_CHUNK_TOKENS", 500)
    with lodestore.Searcher(engine_store, memory_budget=budget, threads=1) as one, \
            lodestore.Searcher(engine_store, memory_budget=budget, threads=2) as two:
        assert one.workers.threads == 1 and two.workers.threads == 2
        batch = two.search(engine_queries, k=10)
        for q, hits in zip(engine_queries, batch):
            assert one.search(q, k=10) == hits == two.search(q, k=10)


def test_centroid_interaction_slices_match_one_gather(monkeypatch):
    rng = np.random.default_rng(0)
    S = rng.standard_normal((8, 300)).astype(np.float32)
    lens = rng.integers(1, 60, size=200)
    codes = rng.integers(0, 300, size=int(lens.sum()))
    whole = _maxsim._segment_max_sum(np.take(S, codes, axis=1), lens)
    monkeypatch.setattr(_maxsim, "CI_CHUNK_TOKENS", 256)
    w = Workers(2)
    try:
        assert np.array_equal(_maxsim.centroid_scores_concat(S, codes, lens, w), whole)
        assert np.array_equal(_maxsim.centroid_scores_concat(S, codes, lens), whole)
    finally:
        w.close()
