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
import time
from pathlib import Path

READERS_DIR = "readers"
LEASE_SUFFIX = ".lease"
TMP_SUFFIX = ".lease-tmp"
STALE_TMP_SECONDS = 600  # a lease temp file this old is a reader that died between create and rename
UNKNOWN = -1  # the generation of a live lease not stamped yet: it pins every file


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
        """
        readers = Path(root) / READERS_DIR
        name = f"{os.getpid()}-{os.urandom(6).hex()}"  # not `secrets`: it imports hashlib (~4 MB of RSS)
        tmp, path = readers / (name + TMP_SUFFIX), readers / (name + LEASE_SUFFIX)
        for attempt in range(10):
            try:
                readers.mkdir(exist_ok=True)
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileNotFoundError:  # another reader removed the empty directory just now
                if attempt == 9:
                    raise
            except OSError as e:
                if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    return cls(None, None)
                raise
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # before the lease is visible under its final name
            os.rename(tmp, path)  # the same open file: the lock comes along
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
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
                self.path.unlink(missing_ok=True)
                try:
                    self.path.parent.rmdir()  # the last reader leaves no directory behind
                except OSError:
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
    """
    readers = Path(root) / READERS_DIR
    try:
        entries = list(os.scandir(readers))
    except FileNotFoundError:
        return []
    out = []
    now = time.time()
    for e in entries:
        path = Path(e.path)
        if e.name.endswith(TMP_SUFFIX):
            try:
                if now - e.stat().st_mtime > STALE_TMP_SECONDS:
                    _remove_if_free(path)
            except FileNotFoundError:
                pass
            continue
        if not e.name.endswith(LEASE_SUFFIX):
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # released meanwhile
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a reader holds it
                out.append(_read_record(fd))
            else:  # nobody holds it: the reader is gone
                path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return out


def _read_record(fd: int) -> tuple[int, frozenset[str] | None]:
    try:
        record = json.loads(os.pread(fd, os.fstat(fd).st_size, 0))
        return int(record["generation"]), frozenset(str(f) for f in record["files"])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return UNKNOWN, None


def _remove_if_free(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    else:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)
