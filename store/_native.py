"""The optional C kernels of the store (store/_decode.c), loaded through ctypes: decode, and
reading CRC-checked runs of inner chunks (and, in one call each, a read's row ranges and its read hints).

ctypes releases the GIL for the call, so a Searcher's threads decode and read in
parallel; numpy's decode holds it between its five array operations, and the
Python reader between its hundreds of per-chunk calls. Built by setup.py at
install time; where it is missing (no C compiler) or LODESTORE_NATIVE=0 is set,
`decode` is None and the codecs use their numpy code, which gives the same
values to ~1 ulp (the norm's sum of squares is accumulated in another order),
and `read_chunks` is None and store/_rawarray.py reads with os.preadv and
google_crc32c (the same bytes, the same checks).
"""

from __future__ import annotations

import ctypes

import numpy as np

from lodestore._cabi import (LS_DECODE_ABI, LS_ERR_ARGS, LS_ERR_BAD_INDEX, LS_OK, LS_READ_BAD_CRC, LS_READ_ERROR,
                             LS_READ_NEED_SHARD, LS_READ_SHORT, array, bind, load_library)

from ._errors import CorruptStoreError

_I = ctypes.c_int64
_BYTES = array(np.uint8, 1)
_LIB = bind(load_library("lodestore.store._decode"), ("ls_decode_abi", LS_DECODE_ABI), {
    # centroids (k, dim), k, dim, codes (n,), n, lut, lut_len, lut_pos_stride, w, rows (n, m), m, normalize, out (n, dim)
    "ls_decode": [array(np.float32, 2), _I, _I, array(np.uint16, 1), _I, array(np.float32), _I, _I, _I,
                  array(np.uint8, 2), _I, ctypes.c_int, array(np.float32, 2, writeable=True)],
    # fds, offsets, counts, nruns, chunk_bytes, out, out_bytes, bad, waits
    "ls_read_chunks": [array(np.int32, 1), array(np.int64, 1), array(np.int64, 1), _I, _I,
                       array(np.uint8, writeable=True), _I, array(np.int64, 1, writeable=True),
                       array(np.int64, 1, writeable=True)],
}, ctypes.c_int)
_ROWS_LIB = None  # ls_read_rows and ls_advise_rows, bound apart (None where the library lacks them)
if _LIB is not None:
    if hasattr(_LIB, "ls_read_rows"):
        _ROWS_LIB = _LIB
        # fds, loaded, n_shards, offsets, wide, n_rows, row_bytes, inner_rows, chunks_per_shard, max_run, starts,
        # stops, n, out, out_bytes, stats
        _LIB.ls_read_rows.argtypes = [array(np.int32, 1), array(np.bool_, 1), _I, ctypes.c_void_p, ctypes.c_int, _I, _I,
                                      _I, _I, _I, array(np.int64, 1), array(np.int64, 1), _I,
                                      array(np.uint8, writeable=True), _I, array(np.int64, 1, writeable=True)]
        _LIB.ls_read_rows.restype = ctypes.c_int
        # fds, loaded, n_shards, offsets, wide, n_rows, row_bytes, inner_rows, chunks_per_shard, starts, stops, n, need
        _LIB.ls_advise_rows.argtypes = [array(np.int32, 1), array(np.bool_, 1), _I, ctypes.c_void_p, ctypes.c_int, _I,
                                        _I, _I, _I, array(np.int64, 1), array(np.int64, 1), _I,
                                        array(np.int64, 1, writeable=True)]
        _LIB.ls_advise_rows.restype = _I
    _LIB.ls_advise.argtypes = [array(np.int32, 1), array(np.int64, 1), array(np.int64, 1), _I]
    _LIB.ls_advise.restype = _I
    for _name in ("ls_crc32c", "ls_crc32c_table"):
        getattr(_LIB, _name).argtypes, getattr(_LIB, _name).restype = [_BYTES, _I], ctypes.c_uint32


def _decode(centroids: np.ndarray, codes: np.ndarray, lut: np.ndarray, lut_pos_stride: int, width: int,
            rows: np.ndarray, normalize: bool) -> np.ndarray:
    """(n, dim) float32 tokens: centroids[codes] + concat_s lut[s * lut_pos_stride + rows[:, s] * width : +width].

    centroids (K, dim) float32 and lut float32, C-contiguous; codes (n,) uint16; rows (n, m) uint8.
    A code >= K (codes come from disk) is a CorruptStoreError, found by the kernel before it reads past the table.
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint16)
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    n, dim = len(codes), centroids.shape[1]
    if rows.ndim != 2 or len(rows) != n or rows.shape[1] * width != dim:
        raise ValueError(f"residual rows of shape {rows.shape} do not match {n} codes of dim {dim}")
    out = np.empty((n, dim), dtype=np.float32)
    if not n:
        return out
    status = _LIB.ls_decode(centroids, len(centroids), dim, codes, n, lut, lut.size, lut_pos_stride, width, rows,
                            rows.shape[1], int(normalize), out)
    if status == LS_ERR_BAD_INDEX:
        raise CorruptStoreError(f"centroid id {int(codes.max())} out of range for {len(centroids)} centroids")
    if status != LS_OK:
        raise ValueError(f"decode: a lookup table of {lut.size} floats does not hold {rows.shape[1]} positions of "
                         f"256 x {width} floats {lut_pos_stride} apart")
    return out


decode = _decode if _LIB is not None else None

READ_SHORT, READ_ERROR, READ_BAD_CRC = LS_READ_SHORT, LS_READ_ERROR, LS_READ_BAD_CRC
RUN_CHUNKS = 512  # chunks per preadv in the kernel (its RUN_IOV)


def _read_chunks(fds: np.ndarray, offsets: np.ndarray, counts: np.ndarray, chunk_bytes: int,
                 out: np.ndarray) -> tuple[int, int, int, int]:
    """Read runs of chunks into out (C-contiguous, counts.sum() * chunk_bytes bytes): run r is counts[r]
    chunks back to back in file descriptor fds[r] from byte offsets[r], each followed by its CRC32C.
    Returns (status, which, errno, waits): status 0, or READ_SHORT / READ_ERROR (which = the run) or
    READ_BAD_CRC (which = the chunk, counted over all runs); waits: read calls that had to wait for the
    device (not all in the page cache), -1 where the kernel cannot tell."""
    fds = np.ascontiguousarray(fds, dtype=np.int32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if not len(fds) == len(offsets) == len(counts) or (counts < 0).any() or chunk_bytes <= 0:
        raise ValueError(f"runs disagree: {len(fds)} files, {len(offsets)} offsets, {len(counts)} counts (>= 0), "
                         f"chunks of {chunk_bytes} bytes")
    if not out.flags["C_CONTIGUOUS"] or not out.flags["WRITEABLE"] or out.nbytes != int(counts.sum()) * chunk_bytes:
        raise ValueError(f"output of {out.nbytes} bytes does not hold {int(counts.sum())} chunks of {chunk_bytes}")
    bad = np.zeros(1, dtype=np.int64)
    waits = np.zeros(1, dtype=np.int64)
    status = _LIB.ls_read_chunks(fds, offsets, counts, len(counts), chunk_bytes, out.reshape(-1).view(np.uint8),
                                 out.nbytes, bad, waits)
    if status == LS_ERR_ARGS:
        raise ValueError(f"read_chunks: runs of {counts.tolist()[:8]} chunks of {chunk_bytes} bytes, offsets "
                         f"{offsets.tolist()[:8]}: a negative count or offset, or more than {out.nbytes} bytes")
    return int(status), int(bad[0]), ctypes.get_errno() if status == READ_ERROR else 0, int(waits[0])


def _crc32c(data, table: bool = False) -> int:
    """CRC32C of a buffer as read_chunks computes it (SSE 4.2 where the CPU has it; table=True: the
    byte-table version other CPUs use). For the tests."""
    a = np.ascontiguousarray(np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data)
    return int((_LIB.ls_crc32c_table if table else _LIB.ls_crc32c)(a.reshape(-1).view(np.uint8), a.nbytes))


read_chunks = _read_chunks if _LIB is not None else None
crc32c = _crc32c if _LIB is not None else None


def _advise(fds: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> int:
    """posix_fadvise(WILLNEED) of lengths[r] bytes at offsets[r] of fds[r], every r, in one call; returns
    the hints the kernel took (failures are ignored: a hint is never an error)."""
    fds = np.ascontiguousarray(fds, dtype=np.int32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    if not len(fds) == len(offsets) == len(lengths):
        raise ValueError(f"advise: {len(fds)} files, {len(offsets)} offsets, {len(lengths)} lengths")
    return int(_LIB.ls_advise(fds, offsets, lengths, len(fds)))


advise = _advise if _LIB is not None else None  # else store/_rawarray.py calls os.posix_fadvise run by run


READ_NEED_SHARD = LS_READ_NEED_SHARD  # ls_read_rows: a shard is not open or its chunk offsets not loaded yet (stats[3])


def _read_rows(fds: np.ndarray, loaded: np.ndarray, offsets: np.ndarray, n_rows: int, row_bytes: int, inner_rows: int,
               chunks_per_shard: int, max_run: int, starts: np.ndarray, stops: np.ndarray,
               out: np.ndarray) -> tuple[int, np.ndarray]:
    """Rows [starts[i], stops[i]) of a sharded array into out (C-contiguous (rows, ...), every row concatenated
    in order), read and CRC-checked in one call: fds and loaded per shard, offsets the byte offset of every
    inner chunk (uint32 or uint64, all ones: absent); runs of at most max_run chunks a read call.
    Returns (status, stats): status 0, READ_NEED_SHARD, or an error after which the caller reads again its
    own way (which names the file and chunk); stats = [bytes read, read calls, calls that waited for the
    device (-1: unknown), the shard needed]."""
    if offsets.dtype not in (np.uint32, np.uint64) or not offsets.flags["C_CONTIGUOUS"] or not len(fds) == len(loaded) \
            or len(offsets) < len(fds) * chunks_per_shard:
        raise ValueError(f"read_rows: offsets {offsets.dtype} ({len(offsets)}), {len(fds)} files, {len(loaded)} loaded "
                         f"flags, {chunks_per_shard} chunks a shard")
    stats = np.zeros(4, dtype=np.int64)
    flat = out.reshape(-1).view(np.uint8)
    status = _ROWS_LIB.ls_read_rows(fds, loaded, len(fds), offsets.ctypes.data, int(offsets.dtype == np.uint64),
                                    n_rows, row_bytes, inner_rows, chunks_per_shard, max_run, starts, stops,
                                    len(starts), flat, out.nbytes, stats)
    return int(status), stats


read_rows = _read_rows if _ROWS_LIB is not None else None


def _advise_rows(fds: np.ndarray, loaded: np.ndarray, offsets: np.ndarray, n_rows: int, row_bytes: int,
                 inner_rows: int, chunks_per_shard: int, starts: np.ndarray, stops: np.ndarray) -> tuple[int, int]:
    """posix_fadvise(WILLNEED) of the chunks rows [starts[i], stops[i]) cover (each non-empty, inside the array,
    ascending), in one call, as store/_rawarray.py advise gives them. fds, loaded, offsets as read_rows.
    Returns (hints given, -1), or (-READ_NEED_SHARD, the shard), or (LS_ERR_ARGS, a negative, -1) when the ranges are
    not so (the caller then hints its own way)."""
    if offsets.dtype not in (np.uint32, np.uint64) or not offsets.flags["C_CONTIGUOUS"] or not len(fds) == len(loaded) \
            or len(offsets) < len(fds) * chunks_per_shard or len(starts) != len(stops):
        raise ValueError(f"advise_rows: offsets {offsets.dtype} ({len(offsets)}), {len(fds)} files, {len(loaded)} "
                         f"loaded flags, {chunks_per_shard} chunks a shard, {len(starts)} starts, {len(stops)} stops")
    need = np.full(1, -1, dtype=np.int64)
    given = _ROWS_LIB.ls_advise_rows(fds, loaded, len(fds), offsets.ctypes.data, int(offsets.dtype == np.uint64),
                                     n_rows, row_bytes, inner_rows, chunks_per_shard, starts, stops, len(starts), need)
    return int(given), int(need[0])


advise_rows = _advise_rows if _ROWS_LIB is not None else None
