"""One query spread over threads (engine/_parallel.py): same answers, real parallelism, errors surface."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import lodestore
from lodestore.engine import _maxsim, _probe, _settings
from lodestore.engine._parallel import Workers, default_threads


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
    monkeypatch.setattr(_probe, "CENTROID_BLOCK", 40)
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
    table, starts = np.ascontiguousarray(S.T), np.concatenate([[0], np.cumsum(lens)[:-1]])
    w = Workers(2)
    try:
        threaded = _maxsim.centroid_interaction(table, codes, starts, lens, w)
        assert np.array_equal(threaded, _maxsim.centroid_interaction(table, codes, starts, lens))
        np.testing.assert_allclose(threaded, whole, rtol=1e-6, atol=1e-5)
    finally:
        w.close()


def test_within_keeps_close_calls_and_caps_each_row():
    from lodestore.engine._probe import within as _within

    S = np.array([[100, 95, 10, 99, 50], [7, 7, 7, 7, 7], [0, -5, 1, 2, 3]], dtype=np.int16)
    rows, cols = _within(S, 5, cap=10)
    assert rows.tolist() == [0] * 3 + [1] * 5 + [2] * 4
    assert cols.tolist() == [0, 1, 3] + [0, 1, 2, 3, 4] + [0, 2, 3, 4]  # rows concatenated, columns ascending
    assert _within(S, 5, cap=2)[1].tolist() == [0, 3] + [0, 1] + [4, 3]  # the best 2 of each row (ties: lower column)


def _probes(searcher, q):
    from lodestore.engine._args import check_queries

    Q = check_queries(searcher.store, [q])[0]
    table, tokens, cents = searcher.prober.score_and_probe(Q, searcher.settings)
    return table, tokens, cents


def test_probing_in_blocks_equals_probing_whole_rows(engine_store, engine_queries, monkeypatch):
    """Each token's top nprobe (and within-delta) centroids, merged from blocks, are those of the whole row."""
    from lodestore.engine._probe import MAX_PROBE, SCORE_SCALE, top_columns as _top_columns, within as _within

    monkeypatch.setattr(_probe, "CENTROID_BLOCK", 40)  # 256 centroids -> 7 blocks
    with lodestore.Searcher(engine_store, nprobe=5, probe_delta=0.05) as s:
        for q in engine_queries[:8]:
            table, tokens, cents = _probes(s, q)
            S = np.ascontiguousarray(table.T)  # (q, K)
            want = {(i, int(c)) for i, row in enumerate(_top_columns(S, 5)) for c in row}
            r, c = _within(S, int(round(0.05 * SCORE_SCALE)), MAX_PROBE)
            want |= set(zip(r.tolist(), c.tolist()))
            assert set(zip(tokens.tolist(), cents.tolist())) == want


def test_probe_delta_only_adds_candidates(engine_store, engine_queries):
    """Wider probing finds every candidate fixed probing finds, so recall can only hold or rise."""
    with lodestore.Searcher(engine_store, memory_budget="auto", nprobe=2, probe_delta=None) as fixed, \
            lodestore.Searcher(engine_store, memory_budget="auto", nprobe=2, probe_delta=0.05) as wide:
        grew = False
        for q in engine_queries:
            a, b = set(_probes(fixed, q)[2].tolist()), set(_probes(wide, q)[2].tolist())
            assert a <= b
            grew |= len(b) > len(a)
        assert grew


@pytest.mark.parametrize("bad", [-0.1, 3, "0.1", float("nan"), True])
def test_bad_probe_delta(engine_store, bad):
    with pytest.raises(ValueError, match="probe_delta"):
        lodestore.Searcher(engine_store, probe_delta=bad)


def test_search_settings_follow_store_size(engine_store, monkeypatch):
    srch = _settings

    with lodestore.Searcher(engine_store) as small:
        st = small.stats()
        assert (st["nprobe"], st["ndocs"], st["probe_delta"]) == (8, srch.DEFAULT_NDOCS, srch.DEFAULT_PROBE_DELTA)
        assert small.settings.wave == srch.DEFAULT_WAVE
        assert small.settings.prefilter * small.ndocs >= srch.CUT_CANDIDATES
    monkeypatch.setattr(srch, "LARGE_STORE_TOKENS", 1000)  # the ~90k-token test store counts as large
    with lodestore.Searcher(engine_store) as large, lodestore.Searcher(engine_store, ndocs=100, probe_delta=None) as own:
        assert (large.ndocs, large.probe_delta) == (srch.LARGE_NDOCS, srch.DEFAULT_PROBE_DELTA)
        assert large.settings.wave == srch.LARGE_WAVE and large.settings.prefilter == srch.CUT_CANDIDATES // srch.LARGE_NDOCS
        assert (own.ndocs, own.probe_delta) == (100, None)  # what the caller says wins


def test_within_does_not_wrap_around_below_int16():
    from lodestore.engine._probe import within as _within

    S = np.array([[-20000, -20500, -30000]], dtype=np.int16)
    rows, cols = _within(S, int(1.5 * 16384), cap=10)
    assert cols.tolist() == [0, 1, 2]  # everything is within 1.5 of the best; nothing wrapped to +32767


def test_long_centroids_lower_the_score_scale():
    from lodestore.engine._probe import SCORE_SCALE, score_scale as _score_scale

    unit = np.eye(4, dtype=np.float32)
    assert _score_scale(unit) == SCORE_SCALE
    assert _score_scale(3 * unit) * 3 <= 32767
