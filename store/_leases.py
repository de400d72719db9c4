"""Reader leases: which generations open readers still use, so garbage is collected only when safe.

A reader holds one lease file `readers/<pid>-<random>.lease` (FORMAT.md section 13)
for as long as it uses a generation. The file holds JSON naming the generation and
the files under segments/ that generation names, and is kept under a shared flock
by the reader. A writer (holding the writer lock)
tries an exclusive, non-blocking flock on each lease: when it gets it, the reader that
made the lease is gone (its process died or it closed without removing the file), so
the lease is stale and is removed; when it cannot, the lease is live and the files
it names are not garbage. flock dies with its process, so a SIGKILLed reader never pins
garbage for ever.

Ordering (why no reader can lose a file): a reader makes its lease visible *before*
it reads the manifest, and a writer commits its manifest *before* it scans leases.
So a writer that does not see a lease collected garbage relative to a manifest the
reader has not read yet: the reader then reads that manifest or a newer one.
A lease that is visible but not yet stamped (or unreadable) pins every file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
from pathlib import Path

from ._errors import CorruptStoreError, StoreError
from ._safefs import MAX_JSON_BYTES, StorePath, open_at, read_fd

READERS_DIR = "readers"
LEASE_SUFFIX = ".lease"
TMP_SUFFIX = ".lease-tmp"
STALE_TMP_SECONDS = 600  # a lease temp file this old is a reader that died between create and rename
UNKNOWN = -1  # the generation of a live lease not stamped yet: it pins every file
LEASE_NAME = re.compile(r"([A-Za-z0-9_-]{1,200})(\.lease|\.lease-tmp)\Z")  # FORMAT.md 4.1


class Lease:
    """One reader's claim on a generation. release() (or garbage collection of the object) drops it."""

    def __init__(self, path: Path | None, fd: int | None, generation: int = UNKNOWN):
        self.path, self._fd, self.generation = path, fd, generation
        self.files: frozenset[str] | None = None
        self._pid = os.getpid()

    @classmethod
    def acquire(cls, root: Path) -> "Lease":
        """Make a visible, locked lease with no generation yet (stamp it after reading the manifest).

        On a store the process cannot write (read-only media, no permission) there can be no
        writer either, so reading without a lease is safe: returns a lease that holds nothing.
        `readers/` is used only as a real directory of the store (never through a symlink).
        """
        readers = StorePath(root) / READERS_DIR
        name = f"{os.getpid()}-{os.urandom(6).hex()}"  # not `secrets`: it imports hashlib (RSS: BENCHMARKS 4)
        tmp, path = name + TMP_SUFFIX, readers / (name + LEASE_SUFFIX)
        for attempt in range(10):
            try:
                readers.mkdir(exist_ok=True)
                dfd = readers.open_dir()
                break
            except FileNotFoundError:  # another reader removed the empty directory just now
                if attempt == 9:
                    raise
            except OSError as e:
                if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    return cls(None, None)
                raise
        try:
            try:
                fd = open_at(dfd, tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, shown=readers / tmp)
            except OSError as e:
                if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    return cls(None, None)
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)  # before the lease is visible under its final name
                os.rename(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)  # the same open file: the lock comes along
            except BaseException:
                os.close(fd)
                os.unlink(tmp, dir_fd=dfd)
                raise
        finally:
            os.close(dfd)
        return cls(path, fd)

    def stamp(self, generation: int, files: set[str] | frozenset[str]) -> None:
        """Record the generation this reader uses and the files under segments/ it names.

        Overwrites in place; a writer that reads a torn record treats the lease as pinning everything.
        """
        self.generation, self.files = int(generation), frozenset(files)
        if self._fd is not None:
            data = json.dumps({"generation": self.generation, "files": sorted(self.files)}).encode()
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lease file and drop the lock. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.path is not None and os.getpid() == self._pid:  # a forked child leaves its parent's lease alone
                try:
                    self.path.unlink(missing_ok=True)
                    self.path.parent.rmdir()  # the last reader leaves no directory behind
                except (OSError, StoreError):
                    pass
        finally:
            os.close(fd)

    def __del__(self) -> None:  # a reader that is never closed still stops pinning garbage when it is freed
        try:
            self.release()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Lease({self.path}, generation={self.generation}, held={self.held})"


def live_leases(root: Path) -> list[tuple[int, frozenset[str] | None]]:
    """(generation, files) of each live lease under `root`; stale leases are removed on the way.

    Writer lock held. A live lease that is not stamped yet (or unreadable) reads as (UNKNOWN, None).
    Only regular files whose names match the lease grammar (FORMAT.md 4.1) are opened or
    removed; anything else under readers/ is left alone. A `readers` that is not a real
    directory (a symlink) is CorruptStoreError.
    """
    readers = StorePath(root) / READERS_DIR
    try:
        dfd = readers.open_dir()
    except FileNotFoundError:
        return []
    try:
        return _scan(dfd, readers)
    finally:
        os.close(dfd)


def _scan(dfd: int, readers: StorePath) -> list[tuple[int, frozenset[str] | None]]:
    out = []
    now = time.time()
    for name in os.listdir(dfd):
        m = LEASE_NAME.match(name)
        if m is None:
            continue
        try:
            fd = open_at(dfd, name, os.O_RDONLY, shown=readers / name)
        except FileNotFoundError:  # released meanwhile
            continue
        except CorruptStoreError:  # a symlink or special file under a lease's name: not a lease, left alone
            continue
        try:
            if m.group(2) == TMP_SUFFIX:
                if now - os.fstat(fd).st_mtime > STALE_TMP_SECONDS and _lock_free(fd):
                    os.unlink(name, dir_fd=dfd)
                continue
            if _lock_free(fd):  # nobody holds it: the reader is gone
                os.unlink(name, dir_fd=dfd)
            else:
                out.append(_read_record(fd))
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return out


def _lock_free(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a reader holds it
        return False
    return True


def _read_record(fd: int) -> tuple[int, frozenset[str] | None]:
    try:
        record = json.loads(read_fd(fd, MAX_JSON_BYTES, shown="lease"))
        generation = record["generation"]
        if type(generation) is not int or not all(isinstance(f, str) for f in record["files"]):
            return UNKNOWN, None
        return generation, frozenset(record["files"])
    except (ValueError, RecursionError, KeyError, TypeError, CorruptStoreError):
        return UNKNOWN, None
