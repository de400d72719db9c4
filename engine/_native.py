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

from store._native import bind, load_library, ptr

_P = ctypes.c_void_p
_I = ctypes.c_int64
_SIGNATURES = {
    "ls_centroid_interaction": [_P, _I, _P, _P, _P, _I, _P],
    "ls_segment_max_sum": [_P, _I, _P, _I, _P],
    "ls_top_rows": [_P, _I, _I, _I, _P, _P, _P],
}
_LIB = bind(load_library("engine._kernels"), ("ls_kernels_abi", 2), _SIGNATURES, ctypes.c_int)


def _check(rc: int) -> None:
    if rc != 0:
        raise MemoryError("lodestore search kernel: out of memory")


def _centroid_interaction(table: np.ndarray, ids: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """table (K, q) int16 C-contiguous, ids uint16; document i = ids[starts[i] : starts[i] + lens[i]], lens >= 1."""
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    lens = np.ascontiguousarray(lens, dtype=np.int64)
    out = np.empty(len(lens), dtype=np.float32)
    if len(lens):
        _check(_LIB.ls_centroid_interaction(ptr(table), table.shape[1], ptr(ids), ptr(starts), ptr(lens), len(lens),
                                            ptr(out)))
    return out


def _segment_max_sum(sim: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """sim (T, q) float32 C-contiguous, documents as runs of lens >= 1 rows -> sum over columns of the run's max."""
    sim = np.ascontiguousarray(sim, dtype=np.float32)
    lens = np.ascontiguousarray(lens, dtype=np.int64)
    if int(lens.sum()) != len(sim) or (len(lens) and int(lens.min()) < 1):
        raise ValueError(f"segment_max_sum: lengths (all >= 1) must add up to the {len(sim)} rows")
    out = np.empty(len(lens), dtype=np.float32)
    if len(lens):
        _check(_LIB.ls_segment_max_sum(ptr(sim), sim.shape[1], ptr(lens), len(lens), ptr(out)))
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
        _check(_LIB.ls_top_rows(ptr(table), b, q, n, None if floor is None else ptr(floor), ptr(cols), ptr(vals)))
    return cols, vals


centroid_interaction = _centroid_interaction if _LIB is not None else None
segment_max_sum = _segment_max_sum if _LIB is not None else None
top_rows = _top_rows if _LIB is not None else None
