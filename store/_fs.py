"""Durable file-system primitives: fsync, atomic replace, failpoints.

Everything the commit protocol relies on lives here so fault-injection tests
can patch one place. POSIX assumptions (FORMAT.md section 3): rename within a
directory is atomic; data is durable only after fsync of the file, and a
directory entry only after fsync of its directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ._safefs import StorePath

# Named hooks that tests make raise (or kill the process) at a chosen step of a
# commit. Production code calls failpoint(name), which is a dict lookup.
_FAILPOINTS: dict[str, Callable[[], None]] = {}


def failpoint(name: str) -> None:
    """Run the action registered for `name`, if any (tests only)."""
    if _KILL_AT_STEP:
        step()
    action = _FAILPOINTS.get(name)
    if action is not None:
        action()


# Crash soak (tools/soak_crash.py): with LODESTORE_KILL_AT_STEP=N the process SIGKILLs
# itself at the N-th durability step: a failpoint, or an fsync of a file or directory.
# `steps` counts them, so a run with a large N tells how many kill points an operation has.
_KILL_AT_STEP = int(os.environ.get("LODESTORE_KILL_AT_STEP", "0") or 0)
steps = 0


def step() -> None:
    """Count one durability step; SIGKILL this process at step LODESTORE_KILL_AT_STEP (crash soak only)."""
    global steps
    steps += 1
    if steps == _KILL_AT_STEP:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def set_failpoint(name: str, action: Callable[[], None] | None) -> None:
    """Register (or with None, clear) the action run at failpoint `name`."""
    if action is None:
        _FAILPOINTS.pop(name, None)
    else:
        _FAILPOINTS[name] = action


_env_fp = os.environ.get("LODESTORE_FAILPOINT_KILL")
if _env_fp:  # crash tests: SIGKILL ourselves when the named step is reached
    import signal

    for _name in _env_fp.split(","):
        _FAILPOINTS[_name] = lambda: os.kill(os.getpid(), signal.SIGKILL)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush one file's data and metadata to stable storage."""
    if _KILL_AT_STEP:
        step()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the directory's entries (creations, renames) durable."""
    if _KILL_AT_STEP:
        step()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under `root` (a freshly written segment), deepest first."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


def write_durable(path: Path, data: bytes) -> None:
    """Write a new file and fsync it (its directory entry is synced by the caller).

    A StorePath (store/_safefs.py) is created through directory descriptors without
    following any symlink; either way the file must not exist yet.
    """
    if isinstance(path, StorePath):
        f = os.fdopen(path.open(os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb")
    else:
        f = open(path, "xb")
    with f:
        f.write(data)
        f.flush()
        if _KILL_AT_STEP:
            step()
        os.fsync(f.fileno())


def atomic_replace(path: Path, data: bytes, *, step: str = "manifest") -> None:
    """Replace `path` with `data` so a crash leaves either the old or the new file.

    Writes `<path>.tmp` in the same directory (a rename across file systems is
    not atomic), fsyncs it, renames it over `path`, then fsyncs the directory.
    On any failure before the rename the old file is untouched.
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # also a planted symlink: the link goes, its target is never touched
    failpoint(f"{step}.before_write")
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        failpoint(f"{step}.before_fsync")
        os.fsync(f.fileno())
    failpoint(f"{step}.before_rename")
    os.replace(tmp, path)
    failpoint(f"{step}.before_dir_fsync")
    fsync_dir(path.parent)
