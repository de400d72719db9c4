"""The optional C search kernels (engine/_kernels.c), loaded through ctypes.

ctypes releases the GIL for each call, so the slices a query's threads run
(engine/_parallel.py) compute in parallel instead of taking turns at the GIL
between numpy calls. Each kernel computes what the numpy code in
engine/_maxsim.py and engine/_searcher.py computes: centroid interaction and
probing bit for bit (integer scores); the segmented MaxSim the same maxima,
summed in query-token order in float32 (numpy sometimes sums pairwise: the two
agree to float32 rounding). Where the library was not built (no C compiler at
install) or LODESTORE_NATIVE=0 is set, the functions here are None and that
numpy code runs.
"""

from __future__ import annotations

import ctypes

import numpy as np

from lodestore._cabi import LS_ERR_ARGS, LS_ERR_BAD_INDEX, LS_ERR_NOMEM, LS_KERNELS_ABI, array, bind, load_library
from lodestore.store import CorruptStoreError

_I = ctypes.c_int64
_F = ctypes.c_float
_SCORES = array(np.int16, 2)  # a (K, q) score table
_OUT = array(np.float32, 1, writeable=True)
_LENS = array(np.int64, 1)
_SIGNATURES = {
    # table (k, q), k, q, ids, n_ids, starts, lens, n, out
    "ls_centroid_interaction": [_SCORES, _I, _I, array(np.uint16, 1), _I, _LENS, _LENS, _I, _OUT],
    # sim (t, q), t, q, lens, n, out
    "ls_segment_max_sum": [array(np.float32, 2), _I, _I, _LENS, _I, _OUT],
    # table (b, q), b, q, n, floor (q,) or NULL, cols (q, n), vals (q, n)
    "ls_top_rows": [_SCORES, _I, _I, _I, array(np.int16, 1, optional=True), array(np.int64, 2, writeable=True),
                    array(np.int16, 2, writeable=True)],
    # table (k, q), k, q, lut (m, 256, q), m, codes (t,), rows (t, m), t, lens, n, table_scale, lut_scale, out
    "ls_residual_maxsim": [_SCORES, _I, _I, array(np.int16, 3), _I, array(np.uint16, 1), array(np.uint8, 2), _I,
                           _LENS, _I, _F, _F, _OUT],
    # cent (k, d), csum, cscale, k, d, qt (d/4, qp, 4), qp, qscale, q, out (k, q)
    "ls_score_table_i8": [array(np.int8, 2), array(np.int32, 1), array(np.float64, 1), _I, _I, array(np.uint8, 3), _I,
                          array(np.float64, 1), _I, array(np.int16, 2, writeable=True)],
    "ls_score_table_i8_plain": None,  # as ls_score_table_i8
    "ls_score_table_has_vnni": [],
}
_SIGNATURES["ls_score_table_i8_plain"] = _SIGNATURES["ls_score_table_i8"]
_LIB = bind(load_library("lodestore.engine._kernels"), ("ls_kernels_abi", LS_KERNELS_ABI), _SIGNATURES, ctypes.c_int)


def _check(rc: int, what: str) -> None:
    """A kernel's status (lodestore/_abi.h) as the error it stands for."""
    if rc == LS_ERR_NOMEM:
        raise MemoryError(f"lodestore search kernel {what}: out of memory")
    if rc == LS_ERR_BAD_INDEX:  # the ids come from the store's files
        raise CorruptStoreError(f"{what}: a centroid id (or a span of ids) read from the store is out of range")
    if rc == LS_ERR_ARGS:
        raise ValueError(f"{what}: the kernel refused mismatched sizes")
    if rc != 0:
        raise RuntimeError(f"{what}: unexpected kernel status {rc}")


def _centroid_interaction(table: np.ndarray, ids: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """table (K, q) int16 C-contiguous, ids uint16; document i = ids[starts[i] : starts[i] + lens[i]], lens >= 1.
    An id >= K, or a span outside ids, is a CorruptStoreError (the ids come from the store's files)."""
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    lens = np.ascontiguousarray(lens, dtype=np.int64)
    out = np.empty(len(lens), dtype=np.float32)
    if len(lens):
        _check(_LIB.ls_centroid_interaction(table, table.shape[0], table.shape[1], ids, len(ids), starts, lens,
                                            len(lens), out), "centroid_interaction")
    return out


def _segment_max_sum(sim: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """sim (T, q) float32 C-contiguous, documents as runs of lens >= 1 rows -> sum over columns of the run's max."""
    sim = np.ascontiguousarray(sim, dtype=np.float32)
    lens = np.ascontiguousarray(lens, dtype=np.int64)
    if int(lens.sum()) != len(sim) or (len(lens) and int(lens.min()) < 1):
        raise ValueError(f"segment_max_sum: lengths (all >= 1) must add up to the {len(sim)} rows")
    out = np.empty(len(lens), dtype=np.float32)
    if len(lens):
        _check(_LIB.ls_segment_max_sum(sim, sim.shape[0], sim.shape[1], lens, len(lens), out), "segment_max_sum")
    return out


def _top_rows(table: np.ndarray, n: int, floor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """table (b, q) int16 C-contiguous, n <= b -> (cols, vals), each (q, n): every column's n largest entries'
    row numbers and values, best first, ties to the lower row. With floor ((q,) int16), only entries >= floor
    of their column count; slots left over have column -1."""
    table = np.ascontiguousarray(table)
    b, q = table.shape
    if table.dtype != np.int16 or not 0 < n <= b:
        raise ValueError(f"top_rows: need int16 and 0 < n <= {b}, got {table.dtype} and n={n}")
    if floor is not None:
        floor = np.ascontiguousarray(floor, dtype=np.int16)
        if floor.shape != (q,):
            raise ValueError(f"top_rows: floor must have shape ({q},), got {floor.shape}")
    cols = np.empty((q, n), dtype=np.int64)
    vals = np.empty((q, n), dtype=np.int16)
    if q:
        _check(_LIB.ls_top_rows(table, b, q, n, floor, cols, vals), "top_rows")
    return cols, vals


def _residual_maxsim(table: np.ndarray, table_scale: float, lut: np.ndarray, lut_scale: float, codes: np.ndarray,
                     rows: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Residual interaction (engine/_maxsim.py residual_interaction): table (K, q) int16, lut (m, 256, q) int16,
    codes (T,) uint16, rows (T, m) uint8, documents as runs of lens >= 1 tokens -> (n,) float32. A code >= K
    is a CorruptStoreError (codes come from the store's files), found by the kernel as it reads them."""
    m, q = lut.shape[0], table.shape[1]
    if table.dtype != np.int16 or lut.dtype != np.int16 or lut.shape[1:] != (256, q) or rows.shape[1:] != (m,) \
            or codes.dtype != np.uint16 or rows.dtype != np.uint8 or len(codes) != len(rows):
        raise ValueError(f"residual_maxsim: mismatched inputs: table {table.shape} {table.dtype}, lut {lut.shape} "
                         f"{lut.dtype}, codes {codes.shape} {codes.dtype}, rows {rows.shape} {rows.dtype}")
    lens = np.ascontiguousarray(lens, dtype=np.int64)
    if int(lens.sum()) != len(codes) or (len(lens) and int(lens.min()) < 1):
        raise ValueError(f"residual_maxsim: lengths (all >= 1) must add up to the {len(codes)} tokens")
    table, lut = np.ascontiguousarray(table), np.ascontiguousarray(lut)
    codes, rows = np.ascontiguousarray(codes), np.ascontiguousarray(rows)
    out = np.empty(len(lens), dtype=np.float32)
    if len(lens):
        _check(_LIB.ls_residual_maxsim(table, len(table), q, lut, m, codes, rows, len(codes), lens, len(lens),
                                       table_scale, lut_scale, out), "residual_maxsim")
    return out


def _score_table_i8(cent: np.ndarray, csum: np.ndarray, cscale: np.ndarray, qt: np.ndarray, qscale: np.ndarray,
                    q: int, out: np.ndarray, plain: bool = False) -> None:
    """engine/_maxsim.py score_table_i8 into out ((k, q) int16, C-contiguous): cent (k, d) int8, csum (k,) int32,
    cscale (k,) float64; qt (d/4, qp, 4) uint8 and qscale (>= q,) float64 from int8_query. AVX-512 VNNI where
    the CPU has it (has_vnni()); plain=True: the portable loops (for the tests)."""
    k, d = cent.shape
    qp = qt.shape[1]
    if cent.dtype != np.int8 or csum.dtype != np.int32 or cscale.dtype != np.float64 or qt.dtype != np.uint8 \
            or qscale.dtype != np.float64 or out.dtype != np.int16 or out.shape != (k, q) or len(csum) != k \
            or len(cscale) != k or qt.shape != (d // 4, qp, 4) or len(qscale) < q or d % 4 or qp % 16 or qp < q \
            or not all(a.flags["C_CONTIGUOUS"] for a in (cent, csum, cscale, qt, qscale, out)):
        raise ValueError(f"score_table_i8: mismatched inputs: cent {cent.shape} {cent.dtype}, qt {qt.shape} {qt.dtype}, "
                         f"out {out.shape} {out.dtype}, q {q}")
    if k and q:
        fn = _LIB.ls_score_table_i8_plain if plain else _LIB.ls_score_table_i8
        _check(fn(cent, csum, cscale, k, d, qt, qp, qscale, q, out), "score_table_i8")


def has_vnni() -> bool:
    """Whether score_table_i8 runs on AVX-512 VNNI here."""
    return _LIB is not None and bool(_LIB.ls_score_table_has_vnni())


centroid_interaction = _centroid_interaction if _LIB is not None else None
segment_max_sum = _segment_max_sum if _LIB is not None else None
top_rows = _top_rows if _LIB is not None else None
residual_maxsim = _residual_maxsim if _LIB is not None else None
score_table_i8 = _score_table_i8 if _LIB is not None else None
#: The product runs in C only on AVX-512 VNNI: without it the portable loops are slower than numpy's
#: float32 BLAS product of the same int8 values (the same table bit for bit; docs/BENCHMARKS.md C6).
VNNI = has_vnni()
