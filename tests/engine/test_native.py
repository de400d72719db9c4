"""The C kernels (engine/_native.py, store/_native.py) against the numpy code they replace.

Centroid interaction must match numpy bit for bit (integer scores), so a build
without a C compiler ranks candidates exactly as one with it; probing's top rows
must match a sorted reference including ties; the segmented MaxSim and decoding
agree to float32 rounding (numpy may sum pairwise). And where a C compiler exists, the kernels must have
been built: a silent fallback to numpy would cost 2-4x on these stages unnoticed.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lodestore import _cabi
from lodestore.engine import _maxsim, _native, _probe
from lodestore.store import CorruptStoreError
from lodestore.store import _native as store_native
from lodestore.store import PQCodec, ResidualCodec

needs_kernels = pytest.mark.skipif(_native.centroid_interaction is None, reason="C kernels not built")


def test_kernels_are_built_where_a_compiler_exists():
    if os.environ.get("LODESTORE_NATIVE") == "0" or not sys.platform.startswith("linux") or not shutil.which("cc"):
        pytest.skip("kernels disabled, or no C compiler on this machine")
    assert _native.centroid_interaction is not None and _native.segment_max_sum is not None
    assert _native.top_rows is not None and store_native.decode is not None and store_native.read_chunks is not None


def test_a_stale_build_falls_back_with_a_warning():
    """A library built from other sources (an editable install not rebuilt) is never called: wrong
    arguments would crash the process."""
    lib = ctypes.CDLL(None)  # the process itself: no ls_* symbols, as a build from older sources would lack one
    with pytest.warns(RuntimeWarning, match="ABI None, expected 1"):
        assert store_native.bind(lib, ("ls_missing_abi", 1), {}, None) is None
    if _native.centroid_interaction is not None:
        kernels = store_native.load_library("lodestore.engine._kernels")
        now = _cabi.LS_KERNELS_ABI
        with pytest.warns(RuntimeWarning, match=f"ABI {now}, expected {now + 1}"):
            assert store_native.bind(kernels, ("ls_kernels_abi", now + 1), {}, None) is None
        with pytest.warns(RuntimeWarning, match="no ls_missing"):
            assert store_native.bind(kernels, ("ls_kernels_abi", now), {"ls_missing": []}, None) is None
    assert store_native.bind(None, ("ls_kernels_abi", 1), {}, None) is None


@st.composite
def ci_cases(draw):
    k = draw(st.integers(1, 300))
    q = draw(st.sampled_from([1, 3, 32, 300]))  # 300 > the kernels' stack buffer
    lens = np.array(draw(st.lists(st.integers(1, 40), min_size=1, max_size=30)), dtype=np.int64)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from([3, 30000]))  # small: many ties
    table = rng.integers(-spread, spread, (k, q)).astype(np.int16)
    gap = rng.integers(0, 3, len(lens))  # spans need not be adjacent
    starts = np.cumsum(np.r_[0, lens[:-1] + gap[:-1]]).astype(np.int64)
    ids = rng.integers(0, k, int(starts[-1] + lens[-1])).astype(np.uint16)
    return table, ids, starts, lens


@needs_kernels
@settings(max_examples=60)
@given(ci_cases())
def test_centroid_interaction_kernel_equals_numpy_bit_for_bit(case):
    table, ids, starts, lens = case
    fast = _maxsim.centroid_interaction(table, ids, starts, lens)
    kernel, _native.centroid_interaction = _native.centroid_interaction, None
    try:
        slow = _maxsim.centroid_interaction(table, ids, starts, lens)
    finally:
        _native.centroid_interaction = kernel
    assert fast.dtype == slow.dtype == np.float32
    assert np.array_equal(fast, slow)
    first = table[ids[starts[0] : starts[0] + lens[0]].astype(np.int64)].astype(np.int64).max(axis=0).sum()
    assert fast[0] == first


@needs_kernels
@settings(max_examples=60)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=20), st.sampled_from([1, 5, 32, 300]),
       st.integers(0, 2**32 - 1))
def test_segment_max_sum_kernel_agrees_with_numpy(lens, q, seed):
    rng = np.random.default_rng(seed)
    lens = np.array(lens, dtype=np.int64)
    query = rng.standard_normal((q, 16)).astype(np.float32)
    tokens = rng.standard_normal((int(lens.sum()), 16)).astype(np.float32)
    fast = _maxsim.maxsim_concat(query, tokens, lens)
    kernel, _native.segment_max_sum = _native.segment_max_sum, None
    try:
        slow = _maxsim.maxsim_concat(query, tokens, lens)
    finally:
        _native.segment_max_sum = kernel
    # the kernel sums the q maxima in order, numpy pairwise: each within q float32 roundings of the sum of |maxima|
    bounds = np.concatenate([[0], np.cumsum(lens)])
    mags = np.array([np.abs((query @ tokens[a:b].T).max(axis=1)).sum() for a, b in zip(bounds[:-1], bounds[1:])])
    assert (np.abs(fast - slow) <= 2e-6 + q * 2.0**-23 * mags).all()
    start = 0
    for i, n in enumerate(lens.tolist()):  # and the exact maxima: same as a float64 per-document reference
        want = (query.astype(np.float64) @ tokens[start : start + n].T.astype(np.float64)).max(axis=1).sum()
        assert abs(fast[i] - want) <= 1e-4 * max(1.0, abs(want))
        start += n


def sorted_top(table: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: each column's n largest entries by (value descending, row ascending)."""
    order = np.lexsort((np.arange(len(table))[:, None].repeat(table.shape[1], 1), -table.astype(np.int64)), axis=0)
    cols = order[:n].T
    return cols, np.take_along_axis(table, cols.T, axis=0).T


@needs_kernels
@settings(max_examples=80)
@given(st.integers(1, 200), st.sampled_from([1, 4, 32, 300]), st.integers(1, 40), st.sampled_from([2, 50, 32767]),
       st.integers(0, 2**32 - 1))
def test_top_rows_kernel_matches_a_sorted_reference_ties_included(b, q, n, spread, seed):
    n = min(n, b)
    rng = np.random.default_rng(seed)
    table = rng.integers(-spread - 1, spread, (b, q)).astype(np.int16)  # the extremes of int16 too
    cols, vals = _native.top_rows(table, n)
    want_cols, want_vals = sorted_top(table, n)
    assert np.array_equal(cols, want_cols) and np.array_equal(vals, want_vals)
    # with a floor: the same order among the entries at or above it, column -1 in the slots left over
    floor = (want_vals[:, 0].astype(np.int64) - rng.integers(0, spread + 1, q)).clip(-32768, 32767).astype(np.int16)
    cols, vals = _native.top_rows(table, n, floor)
    for i in range(q):
        keep = want_vals[i] >= floor[i]
        assert np.array_equal(cols[i, : keep.sum()], want_cols[i][keep]) and (cols[i, keep.sum() :] == -1).all()
        assert np.array_equal(vals[i, : keep.sum()], want_vals[i][keep])


@needs_kernels
@pytest.mark.parametrize("delta", [None, 0, 40, 3000])
@pytest.mark.parametrize("n", [1, 8])
def test_probe_block_kernel_gives_the_numpy_probe_pairs(delta, n, monkeypatch):
    rng = np.random.default_rng(n)
    block = rng.integers(-3000, 3000, (500, 32)).astype(np.int16)
    block[:, 0] = 7  # one token whose every centroid ties: the tie rule decides
    found, close = _probe.probe_block(block, 4096, n, delta)
    monkeypatch.setattr(_native, "top_rows", None)
    slow_found, slow_close = _probe.probe_block(block, 4096, n, delta)
    pairs = lambda t: sorted(zip(*(a.tolist() for a in t)))  # noqa: E731
    assert pairs(found) == pairs(slow_found)
    assert [c for t, c in zip(*found[:2]) if t == 0] == list(range(4096, 4096 + n))  # lowest centroids win ties
    if delta is None:
        assert close is None and slow_close is None
    else:
        assert pairs(close) == pairs(slow_close) and len(close[0]) >= 32


@pytest.mark.skipif(store_native.decode is None, reason="C kernels not built")
@pytest.mark.parametrize("codec_kind", ["scalar1", "scalar2", "scalar4", "pq16", "pq32"])
@pytest.mark.parametrize("normalize", [True, False])
def test_decode_kernel_agrees_with_numpy(codec_kind, normalize, monkeypatch):
    rng = np.random.default_rng(7)
    dim, k = 64, 50
    cents = rng.standard_normal((k, dim)).astype(np.float32)
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    if codec_kind.startswith("pq"):
        m = int(codec_kind[2:])
        codec = PQCodec(cents, rng.standard_normal((m, 256, dim // m)).astype(np.float32) * 0.1)
    else:
        nbits = int(codec_kind[-1])
        cuts = np.sort(rng.standard_normal((1 << nbits) - 1)).astype(np.float32) * 0.05
        codec = ResidualCodec(cents, cuts, np.sort(rng.standard_normal(1 << nbits)).astype(np.float32) * 0.05, nbits)
    codes = rng.integers(0, k, 300).astype(np.uint16)
    rows = rng.integers(0, 256, (300, codec.residual_bytes)).astype(np.uint8)
    fast = codec.decode(codes, rows, normalize=normalize)
    from lodestore.store.codecs import _centroids

    monkeypatch.setattr(_centroids, "native_decode", None)  # both codecs decode through the base class
    slow = codec.decode(codes, rows, normalize=normalize)
    assert fast.dtype == np.float32 and fast.shape == slow.shape == (300, dim)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=2e-6)
    assert codec.decode(codes[:0], rows[:0]).shape == (0, dim)


@pytest.mark.skipif(store_native.decode is None, reason="C kernels not built")
def test_decode_kernel_refuses_out_of_range_codes():
    """Codes come from disk: one past the centroid table is an error, not a read out of bounds."""
    rng = np.random.default_rng(0)
    codec = PQCodec(rng.standard_normal((10, 64)).astype(np.float32), rng.standard_normal((16, 256, 4)).astype(np.float32))
    rows = np.zeros((3, 16), dtype=np.uint8)
    with pytest.raises(CorruptStoreError, match="centroid id 10 out of range for 10"):
        codec.decode(np.array([0, 10, 1], dtype=np.uint16), rows)
    with pytest.raises(ValueError, match="do not match"):
        codec.decode(np.array([0, 1], dtype=np.uint16), rows)


@needs_kernels
def test_kernel_wrappers_refuse_bad_shapes():
    with pytest.raises(ValueError, match="add up"):
        _native.segment_max_sum(np.zeros((5, 4), np.float32), np.array([2, 2]))
    with pytest.raises(ValueError, match="top_rows"):
        _native.top_rows(np.zeros((3, 4), np.int16), 4)
    table, lut = np.zeros((5, 4), np.int16), np.zeros((2, 256, 4), np.int16)
    codes, rows = np.array([0, 4, 1], np.uint16), np.zeros((3, 2), np.uint8)
    with pytest.raises(ValueError, match="add up"):
        _native.residual_maxsim(table, 1.0, lut, 1.0, codes, rows, np.array([1, 1]))
    with pytest.raises(ValueError, match="mismatched"):
        _native.residual_maxsim(table, 1.0, lut[:, :, :3], 1.0, codes, rows, np.array([3]))
    with pytest.raises(CorruptStoreError, match="residual_maxsim: a centroid id .* out of range"):
        _native.residual_maxsim(table, 1.0, lut, 1.0, np.array([0, 5, 1], np.uint16), rows, np.array([3]))


@needs_kernels
def test_search_without_the_kernels_returns_the_same_hits(engine_store_path, engine_queries, tmp_path):
    """LODESTORE_NATIVE=0 (what an install without a C compiler runs): same documents, same order, scores
    equal to float32 rounding, for the default settings and two threads."""
    import json
    import subprocess

    import lodestore

    np.save(tmp_path / "q.npy", engine_queries[:10])
    script = (
        "import json, sys, numpy as np, lodestore\n"
        "from lodestore.engine import _native\n"
        "assert _native.centroid_interaction is None\n"
        f"s = lodestore.Searcher({str(engine_store_path)!r}, threads=2)\n"
        f"print(json.dumps(s.search(np.load({str(tmp_path / 'q.npy')!r}), k=10)))\n"
    )
    env = dict(os.environ, LODESTORE_NATIVE="0")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    slow = json.loads(out.stdout)
    with lodestore.Searcher(engine_store_path, threads=2) as s:
        fast = s.search(engine_queries[:10], k=10)
    assert [[h[0] for h in r] for r in fast] == [[h[0] for h in r] for r in slow]
    np.testing.assert_allclose([[h[1] for h in r] for r in fast], [[h[1] for h in r] for r in slow], rtol=1e-5)


@needs_kernels
@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 300), d=st.sampled_from([3, 4, 17, 128, 384]), q=st.sampled_from([1, 5, 16, 17, 32, 64, 300]),
       zero_rows=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_int8_score_table_kernel_equals_numpy_bit_for_bit(k, d, q, zero_rows, seed):
    """The query-centroid product of int8 copies: VNNI, the portable C loops and numpy's float32 product
    give the same int16 table, within a few thousandths of the float product."""
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((k, d)).astype(np.float32)
    Q = rng.standard_normal((q, d)).astype(np.float32)
    if zero_rows:
        C[0] = 0.0
        Q[-1] = 0.0
    C /= np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)
    Q /= np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), 1e-12)
    cent = _maxsim.int8_centroids(C)
    query = _maxsim.int8_query(Q * np.float32(_probe.SCORE_SCALE), cent[0].shape[1])
    fast = np.empty((k, q), dtype=np.int16)
    _maxsim.score_table_i8(cent, query, fast)
    plain = np.empty((k, q), dtype=np.int16)
    _native.score_table_i8(*cent, query[2], query[1], q, plain, plain=True)
    kernel, _native.score_table_i8 = _native.score_table_i8, None
    try:
        slow = np.empty((k, q), dtype=np.int16)
        _maxsim.score_table_i8(cent, query, slow)
    finally:
        _native.score_table_i8 = kernel
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(plain, slow)
    exact = C.astype(np.float64) @ Q.T.astype(np.float64) * _probe.SCORE_SCALE
    assert np.abs(fast - exact).max() <= 0.01 * _probe.SCORE_SCALE


def test_vnni_is_used_where_the_cpu_has_it():
    if _native.score_table_i8 is None:
        pytest.skip("C kernels not built")
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    assert _native.has_vnni() == ("avx512_vnni" in flags and "avx512bw" in flags and "avx512vl" in flags)


# --------------------------------------------------------------------------- the typed C boundary


def test_status_codes_and_abi_versions_match_the_shared_header():
    """lodestore/_abi.h is the one source of the numbers; lodestore/_cabi.py mirrors them for Python."""
    import re
    from pathlib import Path

    header = (Path(__file__).resolve().parents[2] / "lodestore" / "_abi.h").read_text()
    defined = {m[1]: int(m[2]) for m in re.finditer(r"#define (LS_\w+) \(?(-?\d+)\)?", header)}
    assert len(defined) == 10
    for name, value in defined.items():
        assert getattr(_cabi, name) == value, name
    for path in ("store/_decode.c", "engine/_kernels.c"):
        source = (Path(__file__).resolve().parents[2] / path).read_text()
        assert '#include "_abi.h"' in source and not re.search(r"return -?[1-9];", source), path


@needs_kernels
def test_a_wrong_array_is_a_type_error_at_the_boundary():
    """ctypes checks every array argument (dtype, rank, C-contiguous, aligned, writeable outputs) before
    the C code runs: calling a kernel with the wrong array raises TypeError, never misreads memory."""
    lib = _native._LIB
    table, ids = np.zeros((4, 8), np.int16), np.zeros(6, np.uint16)
    starts, lens, out = np.array([0, 3]), np.array([3, 3]), np.zeros(2, np.float32)

    def call(table=table, ids=ids, starts=starts, lens=lens, out=out):
        return lib.ls_centroid_interaction(table, 4, 8, ids, len(ids), starts, lens, 2, out)

    assert call() == 0
    for bad in (dict(table=table.astype(np.int32)), dict(table=np.asfortranarray(np.zeros((4, 8), np.int16))[:, ::2]),
                dict(ids=ids.astype(np.int64)), dict(starts=starts.astype(np.int32)), dict(table=table.ravel()),
                dict(out=np.zeros(2, np.float64)), dict(out=_read_only(out)), dict(ids=[0, 1, 2])):
        with pytest.raises(ctypes.ArgumentError, match="TypeError|array must"):
            call(**bad)
    with pytest.raises(ctypes.ArgumentError):  # the store's library too
        store_native._LIB.ls_crc32c(np.zeros(4, np.int32), 16)
    with pytest.raises(ctypes.ArgumentError):
        lib.ls_top_rows(table, 4, 8, 2, np.zeros(8, np.int32), np.zeros((8, 2), np.int64), np.zeros((8, 2), np.int16))
    assert lib.ls_top_rows(table, 4, 8, 2, None, np.zeros((8, 2), np.int64), np.zeros((8, 2), np.int16)) == 0


def _read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


@needs_kernels
def test_kernels_refuse_out_of_range_ids_and_spans():
    """Centroid ids and spans come from the store's files: one past K, or a span outside the ids, is an error
    status (a CorruptStoreError from the wrappers), never a read out of bounds."""
    table = np.arange(4 * 8, dtype=np.int16).reshape(4, 8)
    with pytest.raises(CorruptStoreError, match="centroid_interaction"):
        _native.centroid_interaction(table, np.array([0, 4, 1], np.uint16), np.array([0]), np.array([3]))
    with pytest.raises(CorruptStoreError, match="centroid_interaction"):
        _native.centroid_interaction(table, np.array([0, 1, 2], np.uint16), np.array([1]), np.array([3]))
    got = _native.centroid_interaction(table, np.array([0, 3, 1], np.uint16), np.array([0]), np.array([3]))
    assert got.tolist() == [float(table[3].sum())]
    lib = _native._LIB
    out = np.zeros(1, np.float32)
    assert lib.ls_segment_max_sum(np.zeros((3, 2), np.float32), 3, 2, np.array([4]), 1, out) == _cabi.LS_ERR_ARGS
    assert lib.ls_top_rows(table, 4, 8, 5, None, np.zeros((8, 5), np.int64), np.zeros((8, 5), np.int16)) \
        == _cabi.LS_ERR_ARGS
    lut, rows = np.zeros((2, 256, 8), np.int16), np.zeros((3, 2), np.uint8)
    assert lib.ls_residual_maxsim(table, 4, 8, lut, 2, np.array([0, 1, 2], np.uint16), rows, 3, np.array([4]), 1,
                                  1.0, 1.0, out) == _cabi.LS_ERR_ARGS
    assert lib.ls_residual_maxsim(table, 4, 8, lut, 2, np.array([0, 4, 2], np.uint16), rows, 3, np.array([3]), 1,
                                  1.0, 1.0, out) == _cabi.LS_ERR_BAD_INDEX


@needs_kernels
def test_a_wild_span_is_refused_in_a_child_process():
    """A span far outside the ids (a forged offset) would crash a kernel that trusted it: the probe runs in
    a child process, so a regression fails this test instead of killing the suite."""
    import subprocess

    script = (
        "import numpy as np\n"
        "from lodestore.engine import _native\n"
        "from lodestore.store import CorruptStoreError, _native as store_native\n"
        "table = np.zeros((4, 32), np.int16)\n"
        "for starts, ids in (([1 << 40], [0, 1]), ([0], [0, 65535])):\n"
        "    try:\n"
        "        _native.centroid_interaction(table, np.array(ids, np.uint16), np.array(starts), np.array([2]))\n"
        "    except CorruptStoreError:\n"
        "        print('refused')\n"
        "c = np.zeros((4, 8), np.float32)\n"
        "try:\n"
        "    store_native.decode(c, np.array([0, 60000], np.uint16), np.zeros((256, 4), np.float32), 0, 4,\n"
        "                        np.zeros((2, 2), np.uint8), True)\n"
        "except CorruptStoreError:\n"
        "    print('refused')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused"] * 3


@pytest.mark.skipif(store_native.decode is None, reason="C kernels not built")
def test_store_kernels_check_their_bounds():
    lib = store_native._LIB
    c, out = np.zeros((4, 8), np.float32), np.zeros((2, 8), np.float32)
    codes, rows = np.array([0, 1], np.uint16), np.zeros((2, 2), np.uint8)
    # a lookup table too short for 2 positions of 256 x 4 floats: refused before any read
    assert lib.ls_decode(c, 4, 8, codes, 2, np.zeros(1023, np.float32), 1023, 0, 4, rows, 2, 1, out) \
        == _cabi.LS_ERR_ARGS
    assert lib.ls_decode(c, 4, 8, codes, 2, np.zeros(1024, np.float32), 1024, 0, 4, rows, 2, 1, out) == _cabi.LS_OK
    assert lib.ls_decode(c, 4, 8, np.array([0, 4], np.uint16), 2, np.zeros(1024, np.float32), 1024, 0, 4, rows, 2,
                         1, out) == _cabi.LS_ERR_BAD_INDEX
    bad = np.zeros(1, np.int64)
    fds = np.array([0], np.int32)
    # more chunks than the output holds, a negative count or offset: refused before any read
    for counts, offsets, room in (([3], [0], 2 * 64), ([-1], [0], 64), ([1], [-5], 64)):
        assert lib.ls_read_chunks(fds, np.array(offsets), np.array(counts), 1, 64, np.zeros(3 * 64, np.uint8), room,
                                  bad, np.zeros(1, np.int64)) == _cabi.LS_ERR_ARGS


def test_array_arguments_are_ndpointers():
    t = _cabi.array(np.int16, 2, writeable=True)
    assert issubclass(t, np.ctypeslib.ndpointer(np.int16, 2, flags=["C_CONTIGUOUS", "ALIGNED", "WRITEABLE"]))
    assert _cabi.array(np.int16, optional=True).from_param(None) is None
    with pytest.raises(TypeError, match="expected a C-contiguous, aligned int16 array"):
        _cabi.array(np.int16).from_param(None)
