"""Direct reads of the store's uncompressed, sharded Zarr v3 arrays.

The token arrays (`codes`, `residuals`) are Zarr v3 arrays whose codec chain is
`sharding_indexed` with inner chunks `[bytes, crc32c]` and a `[bytes(little),
crc32c]` index at the end of each shard (FORMAT.md section 8). Any Zarr v3
reader can open them; the query path does not go through zarr-python's per-call
machinery: it preads the inner chunks a row range covers, checks each chunk's
CRC32C, and slices rows itself. A checksum mismatch raises CorruptStoreError
naming the file and the inner chunk, so corruption is never silently searched.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import google_crc32c
import numpy as np

from . import _native as native
from ._errors import CorruptStoreError, StoreError
from ._safefs import StorePath
from ._smallarray import _sp, read_array_meta

_MISSING = np.uint64(2**64 - 1)
_MAX_RUN = 256  # chunks per preadv call (2 buffers each; IOV_MAX is 1024 on Linux)
_VERIFY_BYTES = 4 << 20  # verify reads this much of a shard's chunks at a time
assert native.read_chunks is None or _MAX_RUN <= native.RUN_CHUNKS  # then the C reader reads a run in one call


class RawShardedArray:
    """Row reader for one sharded, uncompressed, CRC32C-checked Zarr v3 array.

    `path` is a StorePath (store/_safefs.py): shard files are opened once each, without
    following symlinks, and must be regular files; the descriptors are kept, so reads
    pay no file-system checks. `shape`: the shape the manifest implies (None entries
    unknown), checked against zarr.json before anything is sized from it.
    """

    def __init__(self, path: StorePath, shape: tuple[int | None, ...] | None = None):
        self.path = _sp(path)
        meta = read_array_meta(self.path, shape)
        self.shape, self.dtype, self.shard_rows, self.inner_rows = meta.shape, meta.dtype, meta.chunks[0], meta.inner_rows
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.chunk_bytes = self.inner_rows * self.row_bytes
        self.chunks_per_shard = self.shard_rows // self.inner_rows
        self.n_shards = -(-self.shape[0] // self.shard_rows)
        self._fds: dict[int, int] = {}
        self._offsets: np.ndarray | None = None  # every inner chunk's byte offset (see chunk_offsets)
        self._loaded: np.ndarray | None = None  # which shards' indexes are in it
        self._lock = threading.Lock()
        self._closed = False
        self._check_shards_present()  # before anything is sized by the shard count zarr.json implies
        self._fd_table = np.full(self.n_shards, -1, dtype=np.int32)  # the same descriptors by shard (-1: not open)

    def _check_shards_present(self) -> None:
        """Every shard the shape implies has its entry under c/ (one listing at open), so the row
        count in zarr.json cannot size the offset table beyond the files that exist."""
        if not self.n_shards:
            return
        try:
            names = (self.path / "c").iterdir_names()
        except OSError as e:
            raise CorruptStoreError(f"{self.path}/c: unreadable ({e})") from None
        have = {int(n) for n in names if n.isascii() and n.isdigit() and len(n) < 20 and int(n) < self.n_shards}
        if len(have) != self.n_shards:
            first = next(i for i in range(self.n_shards) if i not in have)
            raise CorruptStoreError(f"{self.shard_file(first)}: shard file missing ({len(have)} of {self.n_shards} present)")

    # ------------------------------------------------------------------ files
    def _shard(self, shard: int) -> StorePath:
        tail = "/".join(["0"] * (len(self.shape) - 1))
        return self.path / "c" / (f"{shard}/{tail}" if tail else f"{shard}")

    def shard_file(self, shard: int) -> Path:
        """The path of shard file `shard` (for messages and tools; reads open it through `_shard`)."""
        return self._shard(shard).path

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                if self._closed:
                    raise StoreError(f"{self.path}: reader is closed")
                fd = self._fds.get(shard)
                if fd is None:
                    try:
                        fd = self._shard(shard).open()
                        _advise_random(fd)
                    except FileNotFoundError:
                        raise CorruptStoreError(f"{self.shard_file(shard)}: shard file missing") from None
                    except OSError as e:
                        raise CorruptStoreError(f"{self.shard_file(shard)}: unreadable shard ({e})") from None
                    self._fds[shard] = fd
                    self._fd_table[shard] = fd
        return fd

    def shard_index(self, shard: int) -> np.ndarray:
        """(chunks_per_shard, 2) uint64 [offset, nbytes] of each inner chunk, read and CRC-checked now."""
        fd = self._fd(shard)
        n = self.chunks_per_shard * 16
        size = os.fstat(fd).st_size
        if size < n + 4:
            raise CorruptStoreError(f"{self.shard_file(shard)}: shard too short for its index ({size} bytes)")
        raw = os.pread(fd, n + 4, size - n - 4)
        if google_crc32c.value(raw[:n]).to_bytes(4, "little") != raw[n:]:
            raise CorruptStoreError(f"{self.shard_file(shard)}: shard index checksum mismatch")
        idx = np.frombuffer(raw[:n], dtype="<u8").reshape(-1, 2)
        step, room = self.chunk_bytes + 4, size - n - 4  # no sum of two uint64s: it could wrap around
        absent = (idx[:, 0] == _MISSING) & (idx[:, 1] == _MISSING)
        ok = absent | ((idx[:, 1] == step) & (idx[:, 0] <= np.uint64(max(room - step, 0))) & (room >= step))
        if not ok.all():
            raise CorruptStoreError(f"{self.shard_file(shard)}: shard index points outside the file")
        return idx

    def chunk_offsets(self, chunk_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(byte offset of each inner chunk in its shard file, whether it is missing), from a cache.

        The cache is one flat table over every inner chunk of the array, filled shard by
        shard from the checked shard indexes as reads first touch them. Only offsets are
        kept (every present chunk's size is chunk_bytes + 4), as uint32 while every
        shard file is under 4 GiB: 4 bytes per chunk instead of 16 (0.3 MB per array of
        a 1e7-token segment at 128 rows a chunk), and one gather per read, whatever
        the number of shards it touches.
        """
        shards = chunk_ids // self.chunks_per_shard
        loaded = self._loaded
        if loaded is not None and loaded[shards].all():  # no lock: a shard is marked loaded after its
            table = self._offsets  # offsets are in the table (widened first where it had to be)
            if table is not None:
                offs = table[chunk_ids]
                return offs.astype(np.uint64), offs == (_MISSING if table.dtype == np.uint64 else 0xFFFFFFFF)
        with self._lock:
            if self._offsets is None:
                n = self.n_shards * self.chunks_per_shard
                self._offsets = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
                self._loaded = np.zeros(self.n_shards, dtype=bool)
            todo = np.unique(shards[~self._loaded[shards]]).tolist()
        for shard in todo:
            full = self.shard_index(shard)[:, 0]
            with self._lock:
                present = full != _MISSING
                if present.any() and int(full[present].max()) >= 0xFFFFFFFF and self._offsets.dtype == np.uint32:
                    wide = self._offsets.astype(np.uint64)
                    wide[wide == 0xFFFFFFFF] = _MISSING
                    self._offsets = wide
                lo = shard * self.chunks_per_shard
                table = self._offsets
                table[lo : lo + len(full)] = np.where(present, full, _MISSING if table.dtype == np.uint64 else 0xFFFFFFFF)
                self._loaded[shard] = True
        table = self._offsets
        offs = table[chunk_ids]
        return offs.astype(np.uint64), offs == (_MISSING if table.dtype == np.uint64 else 0xFFFFFFFF)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._fd_table[:] = -1
            self._offsets = self._loaded = None

    # ------------------------------------------------------------------ reads
    def read_chunks(self, chunk_ids: np.ndarray, waits: dict | None = None) -> tuple[np.ndarray, int, int]:
        """Read sorted unique inner-chunk ids -> ((n, inner_rows, *row) array, bytes read, read calls).

        waits: a dict whose "waits" entry gains the read calls that had to wait for the device
        (the C reader tries each from the page cache first); left alone where that is unknown.

        Chunks that lie back to back in one shard file are read with one preadv,
        straight into the output (no intermediate copy). Every chunk's CRC32C is checked.
        With the C kernel (store/_native.py) all the runs are read and checked in one call
        that releases the GIL; else os.preadv and google_crc32c, run by run. Both raise
        CorruptStoreError for a missing chunk, a truncated file or a CRC mismatch; where one
        read meets several, which one they name may differ (the C reader checks each run's
        CRCs as it goes, and continues a read that stops early where Python reports it).
        """
        chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
        n = len(chunk_ids)
        out = np.empty((n, self.inner_rows) + self.row_shape, dtype=self.dtype)
        flat = out.reshape(n, -1).view(np.uint8)
        step = self.chunk_bytes + 4
        shards, pos = np.divmod(chunk_ids, self.chunks_per_shard)
        offs, missing = self.chunk_offsets(chunk_ids)
        brk = np.ones(n, dtype=bool)
        if n > 1:
            brk[1:] = (shards[1:] != shards[:-1]) | (offs[1:] != offs[:-1] + np.uint64(step)) | missing[1:] | missing[:-1]
        brk[::_MAX_RUN] = True  # preadv takes at most IOV_MAX (1024) buffers: 2 per chunk
        starts = np.nonzero(brk)[0].tolist()
        if native.read_chunks is not None and n:
            nbytes, calls, waited = self._read_native(chunk_ids, shards, pos, offs, missing, starts, flat)
            if waits is not None and waited >= 0:
                waits["waits"] = waits.get("waits", 0) + waited
            return out, nbytes, calls
        nbytes = calls = 0
        stored = np.empty((n, 4), dtype=np.uint8)  # each chunk's CRC32C, read beside its bytes
        # memoryview slices for the iovecs: cheaper to make than numpy views, and a query reads hundreds of chunks
        cb = self.chunk_bytes
        data, crcs = memoryview(flat).cast("B"), memoryview(stored).cast("B")
        chunk = [data[k * cb : (k + 1) * cb] for k in range(n)]
        for a, b in zip(starts, starts[1:] + [n]):
            if missing[a]:  # v1 writers write every chunk inside the array (FORMAT.md 8.4)
                raise CorruptStoreError(
                    f"{self.shard_file(int(shards[a]))}: inner chunk {int(pos[a])} is absent from the shard index"
                )
            shard = int(shards[a])
            # one call reads the run straight into place: chunk bytes into `out`, CRCs aside
            got = os.preadv(self._fd(shard), [x for k in range(a, b) for x in (chunk[k], crcs[4 * k : 4 * k + 4])],
                            int(offs[a]))
            nbytes += got
            calls += 1
            if got != (b - a) * step:
                raise CorruptStoreError(f"{self.shard_file(shard)}: short read (file truncated?)")
        crc = google_crc32c.value  # takes numpy rows, not memoryviews (it refuses buffers that need releasing)
        got_crc = np.fromiter(map(crc, flat), dtype=np.uint32, count=n)
        bad = np.flatnonzero(got_crc != stored.view("<u4").ravel())
        if len(bad):
            raise self._checksum_mismatch(chunk_ids, shards, pos, int(bad[0]))
        return out, nbytes, calls

    def _checksum_mismatch(self, chunk_ids, shards, pos, k: int) -> CorruptStoreError:
        first = int(chunk_ids[k]) * self.inner_rows
        return CorruptStoreError(f"{self.shard_file(int(shards[k]))}: checksum mismatch in inner chunk {int(pos[k])} "
                                 f"(rows {first}..{first + self.inner_rows - 1})")

    def _read_native(self, chunk_ids, shards, pos, offs, missing, starts, flat) -> tuple[int, int, int]:
        """read_chunks' runs in one call of the C reader -> (bytes read, read calls, calls that waited for
        the device or -1 where unknown)."""
        n = len(chunk_ids)
        first = np.asarray(starts, dtype=np.int64)
        if missing[first].any():  # v1 writers write every chunk inside the array (FORMAT.md 8.4)
            a = int(first[np.flatnonzero(missing[first])[0]])
            raise CorruptStoreError(
                f"{self.shard_file(int(shards[a]))}: inner chunk {int(pos[a])} is absent from the shard index")
        counts = np.diff(first, append=n)
        run_shards = shards[first]
        fds = self._fd_table[run_shards]
        if self._closed or (fds < 0).any():  # open them (or say the reader is closed)
            for s in np.unique(run_shards).tolist():
                self._fd(s)
            fds = self._fd_table[run_shards]
        status, which, err, waits = native.read_chunks(fds, offs[first].astype(np.int64), counts, self.chunk_bytes, flat)
        if status == native.READ_BAD_CRC:
            raise self._checksum_mismatch(chunk_ids, shards, pos, which)
        if status == native.READ_SHORT:
            raise CorruptStoreError(f"{self.shard_file(int(shards[first[which]]))}: short read (file truncated?)")
        if status == native.READ_ERROR:
            raise OSError(err, os.strerror(err), str(self.shard_file(int(shards[first[which]]))))
        calls = len(counts)  # runs are cut at _MAX_RUN chunks, within what the kernel reads in one call
        return n * (self.chunk_bytes + 4), calls, waits

    def read_ranges(self, starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, dict]:
        """Rows [starts[i], stops[i]) for every i, concatenated in the given order.

        Returns (rows, io) where io = {"bytes": ..., "calls": ...} and, where the reader can tell,
        "waits": the calls that had to wait for the device. With the C reader, all in one call
        (_read_rows_native); else read_chunks, then the rows gathered.
        """
        starts = np.asarray(starts, dtype=np.int64)
        stops = np.asarray(stops, dtype=np.int64)
        lens = stops - starts
        total = int(lens.sum())
        if total == 0:
            return np.empty((0,) + self.row_shape, self.dtype), {"bytes": 0, "calls": 0}
        if starts.min() < 0 or stops.max() > self.shape[0] or (lens < 0).any():
            raise IndexError(f"row range outside {self.path.name} of {self.shape[0]} rows")
        if native.read_rows is not None and native.read_chunks is not None:
            got = self._read_rows_native(starts, stops, total)
            if got is not None:
                return got
        ir = self.inner_rows
        first = starts // ir
        chunk_ids = self._chunks_of(starts, stops)
        io: dict = {}
        data, io["bytes"], io["calls"] = self.read_chunks(chunk_ids, io)
        # a range's chunks are consecutive in `data`, so its rows are too: place each range once
        first_pos = np.searchsorted(chunk_ids, first) * ir + starts % ir
        rows = np.repeat(first_pos, lens) + _ramp(lens)
        gathered = np.take(data.reshape((-1,) + self.row_shape), rows, axis=0)
        return gathered, io

    def _read_rows_native(self, starts: np.ndarray, stops: np.ndarray, total: int) -> tuple[np.ndarray, dict] | None:
        """read_ranges in one call of the C reader (store/_native.py read_rows): the same rows, read and checked
        the same way, without a Python step per chunk run or a gathered copy. Shards are opened and their
        offsets loaded here as the reader asks for them. None on any error: read_ranges then reads again
        its own way, and names the file and chunk."""
        out = np.empty((total,) + self.row_shape, dtype=self.dtype)

        def call(loaded, table):
            status, stats = native.read_rows(self._fd_table, loaded, table, self.shape[0], self.row_bytes,
                                             self.inner_rows, self.chunks_per_shard, _MAX_RUN, starts, stops, out)
            if status == native.READ_NEED_SHARD:
                return None, int(stats[3])
            if status != 0:
                return None, None
            io = {"bytes": int(stats[0]), "calls": int(stats[1])}
            if stats[2] >= 0:
                io["waits"] = int(stats[2])
            return (out, io), None

        return self._native_with_shards(call)

    def _native_with_shards(self, call):
        """Run a C reader call that may stop for a shard not open or loaded yet: call(loaded, table) ->
        (result, the shard it needs or None); that shard is opened and its offsets loaded, and the call made
        again. The result (None for the call's own failures), or None where the reader is closed."""
        for _ in range(self.n_shards + 1):
            if self._offsets is None:
                self.chunk_offsets(np.zeros(0, dtype=np.int64))  # the (empty) table
            loaded, table = self._loaded, self._offsets  # loaded first: a shard marked in it is in the table
            if self._closed or loaded is None or table is None:
                return None
            result, need = call(loaded, table)
            if need is None:
                return result
            self._fd(need)
            self.chunk_offsets(np.array([need * self.chunks_per_shard], dtype=np.int64))
        return None

    def _chunks_of(self, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        """Sorted unique inner-chunk ids that rows [starts[i], stops[i]) cover (ranges checked by the caller)."""
        ir = self.inner_rows
        first, last = starts // ir, (stops - 1) // ir
        span = np.where(stops > starts, last - first + 1, 0)
        return np.unique(np.repeat(first, span) + _ramp(span))

    def advise(self, starts: np.ndarray, stops: np.ndarray) -> int:
        """Ask the kernel to start reading rows [starts[i], stops[i]) into the page cache now
        (posix_fadvise WILLNEED, which queues the reads and returns without waiting for them), so a
        later read_ranges of them finds them cached or in flight. Back-to-back chunks are one hint.
        Ranges outside the array are ignored (a hint is never an error). Returns the hints given."""
        starts = np.asarray(starts, dtype=np.int64)
        stops = np.minimum(np.asarray(stops, dtype=np.int64), self.shape[0])
        keep = (starts >= 0) & (stops > starts)
        if not keep.any():
            return 0
        if native.advise_rows is not None and native.advise is not None:
            given = self._advise_native(starts[keep], stops[keep])
            if given is not None:
                return given
        chunk_ids = self._chunks_of(starts[keep], stops[keep])
        shards = chunk_ids // self.chunks_per_shard
        offs, missing = self.chunk_offsets(chunk_ids)
        step = self.chunk_bytes + 4
        n = len(chunk_ids)
        brk = np.ones(n, dtype=bool)
        brk[1:] = (shards[1:] != shards[:-1]) | (offs[1:] != offs[:-1] + np.uint64(step)) | missing[1:] | missing[:-1]
        first = np.flatnonzero(brk & ~missing)
        if not len(first):
            return 0
        ends = np.append(np.flatnonzero(brk)[1:], n)  # each run ends where the next one starts
        ends = ends[np.searchsorted(np.flatnonzero(brk), first)]
        fds = [self._fd(s) for s in shards[first].tolist()]
        if native.advise is not None:
            return native.advise(np.array(fds, dtype=np.int32), offs[first].astype(np.int64),
                                 ((ends - first) * step).astype(np.int64))
        for fd, off, length in zip(fds, offs[first].tolist(), ((ends - first) * step).tolist()):
            os.posix_fadvise(fd, off, length, os.POSIX_FADV_WILLNEED)
        return len(first)

    def _advise_native(self, starts: np.ndarray, stops: np.ndarray) -> int | None:
        """advise in one call of the C kernel (store/_native.py advise_rows), for ranges in ascending order
        (the engine's): the same hints. Shards are opened and their offsets loaded as it asks for them.
        None where the ranges are not in order (or the reader is closed): advise then hints its own way."""

        def call(loaded, table):
            given, need = native.advise_rows(self._fd_table, loaded, table, self.shape[0], self.row_bytes,
                                             self.inner_rows, self.chunks_per_shard, starts, stops)
            if given == -native.READ_NEED_SHARD:
                return None, need
            return (given if given >= 0 else None), None

        return self._native_with_shards(call)

    def read_all(self) -> np.ndarray:
        """The whole array (used to make it resident, and by tests)."""
        return self.read_ranges(np.array([0]), np.array([self.shape[0]]))[0]

    # ------------------------------------------------------------------ verify
    def verify(self) -> tuple[int, list[str]]:
        """Check every shard index and inner chunk CRC -> (chunks checked, failure messages)."""
        checked, failures = 0, []
        n_chunks = -(-self.shape[0] // self.inner_rows)
        for shard in range(self.n_shards):
            try:
                self.shard_index(shard)  # its checks raise for a damaged index
            except CorruptStoreError as e:
                failures.append(str(e))
                continue
            first = shard * self.chunks_per_shard
            end = first + min(self.chunks_per_shard, n_chunks - first)
            checked += end - first
            group = max(1, _VERIFY_BYTES // (self.chunk_bytes + 4))
            for lo in range(first, end, group):
                hi = min(lo + group, end)
                try:  # up to _VERIFY_BYTES of chunks in one read; chunk by chunk only to name each bad one
                    self.read_chunks(np.arange(lo, hi))
                    continue
                except CorruptStoreError:
                    pass
                for chunk in range(lo, hi):
                    try:
                        self.read_chunks(np.array([chunk]))
                    except CorruptStoreError as e:
                        failures.append(str(e))
        return checked, failures


def _advise_random(fd: int) -> None:
    """Token rows are read at random: no kernel readahead around each read (it would read, and hold in
    the page cache, up to the device's read_ahead_kb of neighbours nobody asked for). Reads that want
    more ask for it with advise()."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    except OSError:
        pass  # a file system without fadvise reads as it always did


def _ramp(lengths: np.ndarray) -> np.ndarray:
    """For lengths [2, 3] -> [0, 1, 0, 1, 2]: positions within each run, vectorized."""
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) - np.repeat(ends - lengths, lengths)
