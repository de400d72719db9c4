"""Loading lodestore's optional C libraries through ctypes: shared by lodestore.store and
lodestore.engine (neither imports the other's internals for it).

A library is an optional extension module built by setup.py; where it was not built (no C
compiler), was built from other sources (its ABI version differs) or LODESTORE_NATIVE=0 is
set, the loaders here return None and the callers run their numpy code.

The boundary is typed: array arguments are bound with `array(dtype, ...)` (a numpy.ctypeslib.ndpointer
with C_CONTIGUOUS and ALIGNED, WRITEABLE for outputs), so an array of the wrong dtype, layout or
rank is a TypeError at the call (ctypes.ArgumentError), never memory misread by the C code. Status codes and ABI versions
are those of lodestore/_abi.h, the header both libraries include (tests/engine/test_native.py checks
that the numbers below match it).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import warnings

import numpy as np

# lodestore/_abi.h, mirrored
LS_DECODE_ABI = 6
LS_KERNELS_ABI = 5
LS_OK, LS_ERR_NOMEM, LS_ERR_ARGS, LS_ERR_BAD_INDEX = 0, -1, -2, -3
LS_READ_SHORT, LS_READ_ERROR, LS_READ_BAD_CRC = 1, 2, 3
LS_READ_NEED_SHARD = 100


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
        return ctypes.CDLL(spec.origin, use_errno=True)  # errno: for the reader's error messages
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


def array(dtype, ndim: int | None = None, *, writeable: bool = False, optional: bool = False) -> type:
    """The ctypes argument type of a C-contiguous, aligned array of `dtype` (and `ndim` dimensions, when
    given; writeable for an output): a numpy.ctypeslib.ndpointer with those flags. optional: None is also
    accepted (passed as NULL). A wrong array is refused before the C function runs: ctypes raises
    ArgumentError carrying the TypeError.

    Its from_param makes ndpointer's checks as one bit test on the array's flags and passes the data
    address as a void pointer: cheaper than ndpointer's own from_param, which checks each flag and
    returns the array's ctypes object, on calls made per slice of a query.
    """
    dtype = np.dtype(dtype)
    flags = ["C_CONTIGUOUS", "ALIGNED"] + (["WRITEABLE"] if writeable else [])
    base = np.ctypeslib.ndpointer(dtype=dtype, ndim=ndim, flags=flags)
    need = base._flags_
    what = f"a C-contiguous, aligned{', writeable' if writeable else ''} {dtype} array" + (
        f" of {ndim} dimensions" if ndim is not None else "")

    def from_param(cls, a):
        if a is None and optional:
            return None
        if not isinstance(a, np.ndarray):
            raise TypeError(f"expected {what}, got {type(a).__name__}")
        if a.dtype != dtype or (ndim is not None and a.ndim != ndim) or a.flags.num & need != need:
            raise TypeError(f"expected {what}, got {a.dtype} of shape {a.shape} (flags {a.flags.num:#x})")
        return ctypes.c_void_p(a.ctypes.data)

    return type(f"{base.__name__}_checked{'_or_null' if optional else ''}", (base,),
                {"from_param": classmethod(from_param)})
