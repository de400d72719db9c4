"""Residual interaction: candidates scored from per-byte lookup tables instead of decoded tokens.

It must estimate exact MaxSim closely (it only skips the re-normalization of
decoded tokens and rounds to int16), for both codecs, in C and numpy, with no
int16 overflow whatever the codebooks; and the Searcher's results must still be
exact MaxSim scores.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lodestore.engine import _native
from lodestore.engine._maxsim import aligned_empty, maxsim_concat, residual_interaction, residual_lut
from lodestore.engine._probe import SCORE_SCALE
from lodestore.store import PQCodec, ResidualCodec


def make_codec(kind: str, dim: int, k: int, rng: np.random.Generator, spread: float = 0.1):
    cents = rng.standard_normal((k, dim)).astype(np.float32)
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    if kind.startswith("pq"):
        m = int(kind[2:])
        return PQCodec(cents, rng.standard_normal((m, 256, dim // m)).astype(np.float32) * spread)
    nbits = int(kind[-1])
    cuts = np.sort(rng.standard_normal((1 << nbits) - 1)).astype(np.float32) * spread
    return ResidualCodec(cents, cuts, np.sort(rng.standard_normal(1 << nbits)).astype(np.float32) * spread, nbits)


KINDS = ["scalar1", "scalar2", "scalar4", "pq16", "pq32"]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_byte_tables_rebuild_the_undecoded_residual(kind, seed):
    """byte_tables is the residual as a sum of per-byte lookups: centroid + those lookups is decode(normalize=False)."""
    rng = np.random.default_rng(seed)
    codec = make_codec(kind, 64, 20, rng)
    codes = rng.integers(0, 20, 50).astype(np.uint16)
    rows = rng.integers(0, 256, (50, codec.residual_bytes)).astype(np.uint8)
    tables = codec.byte_tables()
    m, _, w = tables.shape
    assert m == codec.residual_bytes and m * w == codec.dim
    rebuilt = codec.centroids[codes] + tables[np.arange(m), rows].reshape(50, codec.dim)
    np.testing.assert_allclose(codec.decode(codes, rows, normalize=False), rebuilt, rtol=0, atol=1e-6)


def reference(query, codec, codes, rows, lens):
    """Exact MaxSim over the un-normalized decoded tokens: what residual interaction estimates."""
    return maxsim_concat(query, codec.decode(codes, rows, normalize=False), lens)


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(KINDS))
    q = draw(st.sampled_from([1, 5, 32, 40, 300]))  # 40: a whole block of 32 and a partial one; 300: past the stack buffer
    seed = draw(st.integers(0, 2**32 - 1))
    spread = draw(st.sampled_from([0.05, 3.0]))  # 3.0: codewords so long the lut scale must shrink
    lens = np.array(draw(st.lists(st.integers(1, 30), min_size=1, max_size=12)), dtype=np.int64)
    return kind, q, seed, spread, lens


@settings(max_examples=60, deadline=None)
@given(cases())
@pytest.mark.parametrize("native", [True, False])
def test_residual_interaction_matches_undecoded_maxsim(native, case):
    if native and _native.residual_maxsim is None:
        pytest.skip("C kernels not built")
    kernel = _native.residual_maxsim
    if not native:
        _native.residual_maxsim = None
    try:
        check_against_reference(*case)
    finally:
        _native.residual_maxsim = kernel


def check_against_reference(kind, q, seed, spread, lens):
    rng = np.random.default_rng(seed)
    dim, k = 64, 30
    codec = make_codec(kind, dim, k, rng, spread)
    query = rng.standard_normal((q, dim)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    codes = rng.integers(0, k, int(lens.sum())).astype(np.uint16)
    rows = rng.integers(0, 256, (len(codes), codec.residual_bytes)).astype(np.uint8)
    table = np.trunc(codec.centroids @ query.T * SCORE_SCALE).astype(np.int16)  # as the Searcher builds it
    lut = residual_lut(query, np.ascontiguousarray(codec.byte_tables(), dtype=np.float32))
    got = residual_interaction(query, table, float(SCORE_SCALE), lut, codec, codes, rows, lens)
    want = reference(query, codec, codes, rows, lens)
    # per query token: the table truncates (< 1/SCORE_SCALE), each of m lut entries rounds (<= 0.5/scale)
    tol = q * (1.0 / SCORE_SCALE + codec.residual_bytes * 0.5 / lut[1]) + 1e-4 * np.abs(want) + 1e-5
    assert got.shape == want.shape == (len(lens),)
    assert np.all(np.abs(got - want) <= tol), (got - want, tol)


def test_lut_scale_leaves_no_room_for_int16_overflow():
    """Codewords long enough to overflow at the default scale: the scale shrinks so that the extreme row
    (every byte at its largest entry for a query token) still sums inside int16, and scores stay right."""
    rng = np.random.default_rng(3)
    codec = make_codec("pq16", 64, 4, rng, spread=5.0)
    query = np.ones((3, 64), np.float32) / 8.0
    tables = np.ascontiguousarray(codec.byte_tables(), dtype=np.float32)
    lut, scale = residual_lut(query, tables)
    assert scale < SCORE_SCALE
    extreme = np.abs(lut.astype(np.int64)).max(axis=1).sum(axis=0)  # (q,): the largest |sum| any row can make
    assert extreme.max() <= 32767
    worst = np.argmax(np.abs(lut.astype(np.int64)), axis=1)[:, 0].astype(np.uint8)  # the bytes of that row
    rows = np.stack([worst, worst])
    codes = np.array([0, 1], np.uint16)
    table = np.trunc(codec.centroids @ query.T * SCORE_SCALE).astype(np.int16)
    got = residual_interaction(query, table, float(SCORE_SCALE), (lut, scale), codec, codes, rows, np.array([2]))
    np.testing.assert_allclose(got, reference(query, codec, codes, rows, np.array([2])), rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("placement", [{}, {"memory_budget": 1}, {"memory_budget": 1, "prefetch": True}])
def test_searcher_hits_carry_exact_scores_and_match_exhaustive(engine_store_path, engine_queries, placement,
                                                               monkeypatch):
    """Residual interaction only picks whom to score: the hits' scores are exact MaxSim over the decoded
    tokens, and with every document a candidate (~1,000: eight slices in four waves, and 63 steps with
    prefetch on) and no early stop, the top 10 are exhaustive search's, whether rows are resident, read
    through or prefetched."""
    import lodestore
    from lodestore.engine import _rerank
    from lodestore.engine._exhaustive import exhaustive_search

    monkeypatch.setattr(_rerank, "STOP_EXPECTED", -1.0)  # never stop early: every survivor is scored
    with lodestore.Searcher(engine_store_path, nprobe=64, ndocs=100000, probe_delta=None, **placement) as s:
        n = len(s.prober.candidates(*_table_and_probes(s, engine_queries[0]), 10, None, s.settings)[0])
        assert n > 4 * 128
        s.search(engine_queries[0], k=10)
        assert s.stats()["scored_per_query"] == n
        for q in engine_queries[:5]:
            hits = s.search(q, k=10)
            want = exhaustive_search(s.store, q, k=10)
            assert [h[0] for h in hits] == [h[0] for h in want]
            np.testing.assert_allclose([h[1] for h in hits], [h[1] for h in want], rtol=1e-5)


def _table_and_probes(searcher, query):
    from lodestore.engine._args import check_queries

    table, _tokens, probed = searcher.prober.score_and_probe(check_queries(searcher.store, [query])[0], searcher.settings)
    return table, probed


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(0, 70), min_size=1, max_size=3), dtype=st.sampled_from([np.int16, np.float32, np.uint8]))
def test_aligned_empty_starts_on_a_cache_line(shape, dtype):
    a = aligned_empty(tuple(shape), dtype)
    assert a.shape == tuple(shape) and a.dtype == dtype and a.flags["C_CONTIGUOUS"]
    assert a.size == 0 or a.ctypes.data % 64 == 0  # (an empty array's address is numpy's to pick)
    a[...] = 7  # writable, and exactly its own bytes
    assert (a == 7).all() and a.nbytes == int(np.prod(shape)) * np.dtype(dtype).itemsize


def test_lookup_tables_are_aligned_and_equal_the_rounded_products():
    """The kernels read 64-byte lookup rows: the tables start on a cache line, and aligning
    them changed no value (each entry is the rounded, scaled dot product)."""
    rng = np.random.default_rng(3)
    codec = make_codec("pq32", 128, 16, rng)
    q = rng.standard_normal((32, 128)).astype(np.float32)
    lut, scale = residual_lut(q, codec.byte_tables())
    assert lut.dtype == np.int16 and lut.ctypes.data % 64 == 0
    products = np.matmul(codec.byte_tables(), np.ascontiguousarray(q.reshape(32, 32, 4).transpose(1, 2, 0)))
    np.testing.assert_array_equal(lut, np.rint(products * np.float32(scale)).astype(np.int16))  # rounded, not truncated


def test_stop_rule():
    """Stop once the unscored survivors' expected entrants into the best n (the caller's n: those exact MaxSim
    re-ranks; centroid interaction plus a normal gain fitted to the last wave's gains) fall under
    STOP_EXPECTED; never before n are scored."""
    from lodestore.engine._rerank import STOP_EXPECTED, stop

    WAVE = 128

    def _stop(scores, ci, rest, k):
        return stop(scores, ci, rest, k, WAVE)

    rng = np.random.default_rng(5)
    ci = np.sort(rng.uniform(8.0, 10.0, 2 * WAVE))[::-1].astype(np.float32)  # best first
    gains = rng.normal(0.5, 0.1, len(ci)).astype(np.float32)
    scores = ci + gains
    kth = float(np.sort(scores)[-10])
    assert not _stop(scores[:5], ci[:5], ci[5:], 10)  # fewer than k scored
    assert _stop(scores, ci, np.full(1000, kth - 3.0, np.float32), 10)  # 3 below, 0.1 of spread: out of reach
    assert not _stop(scores, ci, np.full(1000, kth - 0.5, np.float32), 10)  # a flat tail at even odds
    assert _stop(scores, ci, np.zeros(0, np.float32), 10)  # none left
    # at the edge: one unscored survivor whose odds are just under / just over STOP_EXPECTED
    last = (scores - ci)[-WAVE:].astype(np.float64)
    mean, spread = last.mean(), last.std()
    from statistics import NormalDist
    z = NormalDist().inv_cdf(1.0 - STOP_EXPECTED)  # P(gain > kth - c) = STOP_EXPECTED at c = kth - mean - z spread
    edge = kth - mean - z * spread
    assert _stop(scores, ci, np.array([edge - 0.01], np.float32), 10)
    assert not _stop(scores, ci, np.array([edge + 0.01], np.float32), 10)
    # only the last wave's gains count: a wide first wave does not keep a tight last one going
    wide = scores.copy()
    wide[:WAVE] += rng.normal(0.0, 3.0, WAVE).astype(np.float32)
    kth_wide = float(np.sort(wide)[-10])
    assert _stop(wide, ci, np.full(100, kth_wide - mean - 10 * spread, np.float32), 10)


@settings(max_examples=200, deadline=None)
@given(x=st.floats(-12.0, 12.0))
def test_erfc_matches_the_standard_library(x):
    import math

    from lodestore.engine._rerank import erfc

    want = math.erfc(x)
    assert abs(float(erfc(np.array([x]))[0]) - want) <= 2e-7 * want + 1e-300


@settings(max_examples=50, deadline=None)
@given(centres=st.lists(st.floats(-5.0, 5.0), max_size=40), threshold=st.floats(-5.0, 5.0),
       spread=st.floats(0.01, 3.0))
def test_expected_passing_is_the_sum_of_normal_tails(centres, threshold, spread):
    from statistics import NormalDist

    from lodestore.engine._rerank import expected_passing

    want = sum(1.0 - NormalDist(c, spread).cdf(threshold) for c in centres)
    assert abs(expected_passing(np.array(centres, dtype=np.float64), threshold, spread) - want) <= 1e-6 * max(1.0, want)


def test_early_stop_is_deterministic_and_counted(engine_store_path, engine_queries):
    """With the stop on, one or two threads score the same survivors and return the same hits; the stats
    count the survivors scored, whole waves (or all survivors), never more than ndocs; waves of 128 for a
    store this small, and a wave that is not two whole prefetch steps' slices is refused."""
    import lodestore

    runs = []
    for threads in (1, 2):
        with lodestore.Searcher(engine_store_path, nprobe=64, ndocs=900, probe_delta=None, threads=threads) as s:
            wave = s.settings.wave
            hits = [s.search(q, k=10) for q in engine_queries[:8]]
            counts = []
            for q in engine_queries[:8]:
                s.reset_stats()
                s.search(q, k=10)
                counts.append(s.stats()["scored_per_query"])
            runs.append((hits, counts))
    assert runs[0] == runs[1]
    assert min(runs[0][1]) < 900, "no query stopped early: the test exercises nothing"
    assert wave == 128
    for n in runs[0][1]:
        assert n <= 900 and (n == 900 or n % wave == 0)
    with lodestore.Searcher(engine_store_path, nprobe=64, ndocs=900, probe_delta=None) as s:
        import dataclasses

        s.settings = dataclasses.replace(s.settings, wave=40)  # slices of 20: not whole 16-document steps
        with pytest.raises(ValueError, match="two slices of whole"):
            s.search(engine_queries[0], k=10)


@pytest.mark.parametrize("k", [1, 10, 20])
def test_the_stop_rule_guards_the_set_exact_maxsim_reranks_not_the_top_k(engine_store_path, engine_queries, monkeypatch, k):
    """The bar stop() is given is the n_exact-th best (max(EXACT_DOCS, 2k)), whatever k: against the k-th
    best a k = 1 search (with a filter) stopped while an unscored survivor could still enter the set exact
    MaxSim re-ranks, and lost its best document."""
    import lodestore
    from lodestore.engine import _rerank

    seen = []
    real = _rerank.stop

    def spy(scores, ci, rest_ci, n_best, wave):
        seen.append(n_best)
        return real(scores, ci, rest_ci, n_best, wave)

    monkeypatch.setattr(_rerank, "stop", spy)
    with lodestore.Searcher(engine_store_path, nprobe=64, ndocs=900, probe_delta=None) as s:
        for q in engine_queries[:4]:
            s.search(q, k=k)
    assert seen and set(seen) == {max(_rerank.EXACT_DOCS, 2 * k)}
