"""Where the index arrays live: in RAM, or paged from an unlinked file when the memory budget is smaller.

A Searcher whose `memory_budget` is below its index keeps the big index arrays (the inverted lists,
each document's distinct centroid ids, their offsets, the id table) in a file it writes at open
and memory-maps: the kernel reads their pages when a query touches them and may drop them again,
so they count against the page cache (and a memory cgroup's limit), not against the process's
anonymous memory. The file is unlinked as soon as it is created: nothing is left behind, whatever
way the process ends. It holds derived data only (rebuilt at every open), never part of the store.
"""

from __future__ import annotations

import mmap
import os
import tempfile

import numpy as np

ALIGN = 4096  # each array starts on a page of its own


class ResidentArrays:
    """Index arrays in RAM: the default."""

    paged = False

    def empty(self, n: int, dtype) -> np.ndarray:
        return np.empty(n, dtype=dtype)

    def keep(self, arr: np.ndarray) -> np.ndarray:
        return arr

    def seal(self) -> None:
        """Done writing (nothing to do in RAM)."""

    def close(self) -> None:
        pass


class PagedArrays:
    """Index arrays in an unlinked temporary file under `directory`, memory-mapped.

    empty() reserves an array in the file (written through the map); keep() copies one built in RAM
    there. seal() writes every dirty page back, drops the pages from this process's memory and from
    the page cache (posix_fadvise DONTNEED), and advises random access: from then on a query reads
    the pages it touches, as it reads token rows.
    """

    paged = True

    def __init__(self, directory: str | os.PathLike | None = None):
        directory = os.fspath(directory) if directory is not None else tempfile.gettempdir()
        self._file = tempfile.TemporaryFile(dir=directory, prefix="lodestore-index-")  # unlinked at once
        self._size = 0
        self._maps: list[mmap.mmap] = []
        self.bytes = 0  # bytes of the arrays placed in the file

    def empty(self, n: int, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(n) * dtype.itemsize
        if nbytes == 0:
            return np.empty(0, dtype=dtype)
        start = self._size
        self._size = -(-(start + nbytes) // ALIGN) * ALIGN
        os.ftruncate(self._file.fileno(), self._size)
        mm = mmap.mmap(self._file.fileno(), nbytes, offset=start)
        self._maps.append(mm)
        self.bytes += nbytes
        return np.frombuffer(mm, dtype=dtype, count=int(n))

    def keep(self, arr: np.ndarray) -> np.ndarray:
        out = self.empty(arr.size, arr.dtype)
        out[...] = arr.ravel()
        return out.reshape(arr.shape)

    def seal(self) -> None:
        for mm in self._maps:
            mm.flush()
            mm.madvise(mmap.MADV_DONTNEED)  # out of this process's page tables (the file holds the bytes)
            mm.madvise(mmap.MADV_RANDOM)  # a touched page reads that page, not its neighbours
        os.posix_fadvise(self._file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # and out of the page cache

    def close(self) -> None:
        """Unmap and close the file (the kernel frees it then). Arrays still referring to a map keep
        that map (and its descriptor) until they are gone: drop them first."""
        for mm in self._maps:
            try:
                mm.close()
            except BufferError:  # an array still uses it: unmapped when that array is collected
                pass
        self._maps.clear()
        self._file.close()
