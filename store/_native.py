"""The optional C decode kernel (store/_decode.c), loaded through ctypes.

ctypes releases the GIL for the call, so a Searcher's threads decode in parallel;
numpy's decode holds it between its five array operations. Built by setup.py at
install time; where it is missing (no C compiler) or LODESTORE_NATIVE=0 is set,
`decode` is None and the codecs use their numpy code, which gives the same
values to ~1 ulp (the norm's sum of squares is accumulated in another order).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import warnings

import numpy as np


def load_library(module: str) -> ctypes.CDLL | None:
    """The shared library an optional extension module was built into, or None (not built, or disabled)."""
    if os.environ.get("LODESTORE_NATIVE", "1") == "0":
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith((".so", ".pyd", ".dylib")):
        return None
    try:
        return ctypes.CDLL(spec.origin)
    except OSError:
        return None


def bind(lib: ctypes.CDLL | None, abi: tuple[str, int], signatures: dict[str, list], restype) -> ctypes.CDLL | None:
    """Set each function's argument and result types. None when the library was built from other
    sources (a stale build of an editable install: its ABI function, abi = (name, version), returns
    another version, or a function is missing): warn, and let the numpy code run, since calling a
    function with the wrong arguments would crash the process."""
    if lib is None:
        return None
    try:
        version = getattr(lib, abi[0])
        version.argtypes, version.restype = [], ctypes.c_int
        built = int(version())
    except AttributeError:
        built = None
    if built != abi[1]:
        warnings.warn(f"{lib._name}: built from other sources (ABI {built}, expected {abi[1]}; reinstall to "
                      "rebuild): using the numpy code", RuntimeWarning, stacklevel=2)
        return None
    for name, argtypes in signatures.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            warnings.warn(f"{lib._name}: no {name} (built from older sources; reinstall to rebuild): "
                          "using the numpy code", RuntimeWarning, stacklevel=2)
            return None
        fn.argtypes, fn.restype = argtypes, restype
    return lib


_P = ctypes.c_void_p
_I = ctypes.c_int64
_LIB = bind(load_library("store._decode"), ("ls_decode_abi", 2), {"ls_decode": [_P, _I, _I, _P, _I, _P, _I, _I, _P, _I, ctypes.c_int, _P]},
            ctypes.c_int)


def ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def _decode(centroids: np.ndarray, codes: np.ndarray, lut: np.ndarray, lut_pos_stride: int, width: int,
            rows: np.ndarray, normalize: bool) -> np.ndarray:
    """(n, dim) float32 tokens: centroids[codes] + concat_s lut[s * lut_pos_stride + rows[:, s] * width : +width].

    centroids (K, dim) float32 and lut float32, C-contiguous; codes (n,) uint16; rows (n, m) uint8.
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint16)
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    n, dim = len(codes), centroids.shape[1]
    if rows.ndim != 2 or len(rows) != n or rows.shape[1] * width != dim:
        raise ValueError(f"residual rows of shape {rows.shape} do not match {n} codes of dim {dim}")
    out = np.empty((n, dim), dtype=np.float32)
    if n and _LIB.ls_decode(ptr(centroids), len(centroids), dim, ptr(codes), n, ptr(lut), lut_pos_stride, width,
                            ptr(rows), rows.shape[1], int(normalize), ptr(out)) != 0:
        bad = int(codes.max())
        raise IndexError(f"centroid id {bad} out of range for {len(centroids)} centroids")
    return out


decode = _decode if _LIB is not None else None
