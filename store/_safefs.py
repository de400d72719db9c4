"""Opening files of a store that may be hostile: names checked, no symlink followed, regular files only.

A store directory is input (users open stores they downloaded or copied), so every
path the store opens, creates or removes is a `StorePath`: the store root (the one
path the user chose, trusted as given) plus components that each match the name
grammar of FORMAT.md section 4.1 (no `..`, no `/`, no empty name). Opening walks
the components with directory file descriptors and O_NOFOLLOW, so a symlink planted
anywhere below the root is refused, never followed; files are opened O_NONBLOCK
(a FIFO cannot hang an open) and must be regular files (S_ISREG) no larger than
the caller's bound (a /dev/zero or a huge file cannot exhaust memory). Errors are
CorruptStoreError naming the path.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

from ._errors import CorruptStoreError

# One path component: letters, digits, `_`, `-`, `.`; not `.` or `..`; at most 255 bytes.
_COMPONENT = re.compile(r"(?!\.{1,2}\Z)[A-Za-z0-9_.-]{1,255}\Z")
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW

#: Largest metadata JSON a reader parses: zarr.json (FORMAT.md 4.2), a lease record.
MAX_JSON_BYTES = 1 << 20


def check_component(name: str) -> str:
    """`name` if it is one valid path component (FORMAT.md 4.1), else CorruptStoreError."""
    if not isinstance(name, str) or not _COMPONENT.match(name):
        raise CorruptStoreError(f"{name!r}: not a valid name inside a store")
    return name


class StorePath:
    """A path inside a store: the trusted root plus checked components. Opened without following symlinks.

    `/` appends components (a string with `/` is split, each part checked), so no
    StorePath can name anything outside its root. `os.fspath` gives the plain path
    (for messages and for zarr-python, which writes only into directories this
    module made).
    """

    __slots__ = ("root", "parts")

    def __init__(self, root: str | os.PathLike, parts: tuple[str, ...] = ()):
        self.root = Path(root)
        self.parts = tuple(check_component(p) for p in parts)

    def __truediv__(self, name: str) -> "StorePath":
        return StorePath(self.root, self.parts + tuple(str(name).split("/")))

    def __fspath__(self) -> str:
        return str(self.root.joinpath(*self.parts))

    def __str__(self) -> str:
        return self.__fspath__()

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and (self.root, self.parts) == (other.root, other.parts)

    def __hash__(self) -> int:
        return hash((self.root, self.parts))

    @property
    def name(self) -> str:
        return self.parts[-1] if self.parts else self.root.name

    @property
    def parent(self) -> "StorePath":
        if not self.parts:
            raise ValueError("the store root has no parent inside the store")
        return StorePath(self.root, self.parts[:-1])

    @property
    def path(self) -> Path:
        return Path(self)

    # ------------------------------------------------------------------ descriptors
    def _walk(self, parts: tuple[str, ...]) -> int:
        """A directory fd of root/parts, every component opened O_NOFOLLOW (caller closes it)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(parts):
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = self.root.joinpath(*parts[: i + 1])
                        raise CorruptStoreError(f"{where}: a symlink or not a directory (refused)") from None
                    raise
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_dir(self) -> int:
        """An O_NOFOLLOW directory fd of this path (caller closes it)."""
        return self._walk(self.parts)

    def parent_fd(self) -> int:
        """A directory fd of the parent (caller closes it)."""
        return self._walk(self.parts[:-1])

    def open(self, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
        """An fd of this regular file (created if flags say so), never through a symlink, never blocking."""
        dfd = self.parent_fd()
        try:
            return open_at(dfd, self.name, flags, mode, shown=self)
        finally:
            os.close(dfd)

    # ------------------------------------------------------------------ whole files
    def read_bytes(self, max_size: int) -> bytes:
        """The whole regular file, refused (CorruptStoreError) when larger than `max_size` bytes."""
        fd = self.open()
        try:
            return read_fd(fd, max_size, shown=self)
        finally:
            os.close(fd)

    def read_json(self, max_size: int = MAX_JSON_BYTES) -> Any:
        """Parse the file as JSON; any parse failure (also nesting too deep) is CorruptStoreError."""
        return parse_json(self.read_bytes(max_size), self)

    def lstat(self) -> os.stat_result | None:
        """lstat of this path, or None when it (or a parent) is missing."""
        if not self.parts:
            return os.stat(self.root)
        try:
            dfd = self.parent_fd()
        except FileNotFoundError:
            return None
        try:
            return os.lstat(self.name, dir_fd=dfd)
        except FileNotFoundError:
            return None
        finally:
            os.close(dfd)

    def is_file(self) -> bool:
        st = self.lstat()
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_dir(self) -> bool:
        st = self.lstat()
        return st is not None and stat.S_ISDIR(st.st_mode)

    def exists(self) -> bool:
        return self.lstat() is not None

    def iterdir_names(self) -> list[str]:
        """Names in this directory (missing directory: [])."""
        try:
            fd = self.open_dir()
        except FileNotFoundError:
            return []
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ writing
    def mkdir(self, *, exist_ok: bool = False) -> None:
        """Create this directory (never through a symlink); an existing non-directory is refused."""
        dfd = self.parent_fd()
        try:
            os.mkdir(self.name, 0o755, dir_fd=dfd)
        except FileExistsError:
            st = os.lstat(self.name, dir_fd=dfd)
            if not stat.S_ISDIR(st.st_mode):
                raise CorruptStoreError(f"{self}: exists and is not a directory (a symlink is refused)") from None
            if not exist_ok:
                raise
        finally:
            os.close(dfd)

    def rmdir(self) -> None:
        """Remove this directory if it is empty (OSError otherwise)."""
        dfd = self.parent_fd()
        try:
            os.rmdir(self.name, dir_fd=dfd)
        finally:
            os.close(dfd)

    def unlink(self, *, missing_ok: bool = True) -> None:
        """Remove this file or symlink entry (a symlink's target is never touched)."""
        try:
            dfd = self.parent_fd()
        except FileNotFoundError:
            if missing_ok:
                return
            raise
        try:
            os.unlink(self.name, dir_fd=dfd)
        except FileNotFoundError:
            if not missing_ok:
                raise
        finally:
            os.close(dfd)

    def remove_tree(self) -> None:
        """Remove this entry: a directory with its contents (fd-based, symlinks unlinked, not followed), or a file."""
        try:
            dfd = self.parent_fd()
        except FileNotFoundError:
            return
        try:
            st = os.lstat(self.name, dir_fd=dfd)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(self.name, ignore_errors=True, dir_fd=dfd)  # as much as can go: garbage may stay
            else:
                os.unlink(self.name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)


def open_at(dir_fd: int, name: str, flags: int = os.O_RDONLY, mode: int = 0o644, *, shown: object = None) -> int:
    """Open `name` in `dir_fd` as a regular file: O_NOFOLLOW, O_NONBLOCK, then S_ISREG checked."""
    check_component(name)
    try:
        fd = os.open(name, flags | _NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP or e.errno == errno.ENOENT and flags & os.O_CREAT and _is_link(dir_fd, name):
            raise CorruptStoreError(f"{shown or name}: a symlink (refused)") from None
        if e.errno in (errno.EISDIR, errno.ENXIO):
            raise CorruptStoreError(f"{shown or name}: not a regular file") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CorruptStoreError(f"{shown or name}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def read_fd(fd: int, max_size: int, *, shown: object) -> bytes:
    """All bytes of the regular file `fd`, refused when its size exceeds `max_size`."""
    size = os.fstat(fd).st_size
    if size > max_size:
        raise CorruptStoreError(f"{shown}: {size} bytes, more than the format allows here ({max_size})")
    parts, got = [], 0
    while got <= size:  # read one byte past the size: a file that grows is not read without bound
        chunk = os.pread(fd, size + 1 - got, got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    if got != size:
        raise CorruptStoreError(f"{shown}: changed size while being read")
    return b"".join(parts)


def parse_json(data: bytes, shown: object) -> Any:
    """json.loads, with every failure (bad UTF-8, syntax, nesting too deep, huge numbers) as CorruptStoreError."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptStoreError(f"{shown}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None


def tree_bytes(root: str | os.PathLike, relative: str = "") -> int:
    """Bytes of the regular files under root/relative, for stats: 0 when it is missing or when any
    component below the root is a symlink (the walk never leaves the store); links inside are not
    followed, and files that vanish meanwhile are skipped."""
    root = os.path.realpath(root)
    top = os.path.join(root, relative) if relative else root
    if os.path.realpath(top) != os.path.normpath(top) or not os.path.isdir(top):
        return 0
    total = 0
    for dirpath, _dirs, files in os.walk(top):  # followlinks=False: a linked directory is not entered
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
