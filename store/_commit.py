"""The writer's side of the commit protocol: the lock, the commit point, roll-back and garbage collection.

FORMAT.md section 12 numbers the commit steps (1-8) and the invariants every durable
state keeps; this module is where the writer keeps them (the operations that write the
new files are store/_writer.py's; the manifest's own write, steps 4-7, is
store/_manifest.py's write_manifest):

1. manifest.json is always a complete manifest of some committed generation: only
   `commit` replaces it, by write_manifest's temp file, fsync and rename.
2. Every file a durable manifest names is complete and durable: the operations fsync
   their trees (steps 2-3) before they call `commit` (step 6).
3. Files named by a committed manifest are never modified, renamed or truncated:
   new state goes to new names; `collect_garbage` removes only what the current
   manifest does not name and no reader lease pins (FORMAT.md section 13).
4. Generations increase by exactly 1 per commit and a name holding {G} was created by
   commit G: every operation commits `generation + 1` and names its files with it;
   `roll_back` removes the files of a commit that did not happen, never others.
5. `codec` is null until the first segment commits and never changes after: only the
   first add writes codec/ (and projection/), in the same commit as its segment.
6. Segment entries match their arrays and bitmaps: the entries are built from what
   was written (store/_writer.py).
7. Live ids are unique across the store: add refuses a live id unless upsert deletes
   it in the same commit (store/_writer.py).

After a failure before the rename (step 6) the writer removes what it wrote
(`roll_back`); after it, the new generation stands and nothing it names is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ._errors import StoreError, StoreLockedError
from ._fs import failpoint
from ._leases import READERS_DIR, UNKNOWN, live_leases
from ._manifest import (DELETES_NAME, MANIFEST_NAME, SEGMENT_NAME, SPILL_NAME, Manifest, read_manifest,
                        write_manifest)
from ._safefs import StorePath

if TYPE_CHECKING:
    from ._store import Store

SEGMENTS_DIR = "segments"
CODEC_DIR = "codec"
PROJECTION_DIR = "projection"
LOCK_NAME = ".lock"


def acquire_lock(root: Path) -> int:
    """Take the writer lock (FORMAT.md section 14): an open fd holding flock LOCK_EX, or StoreLockedError."""
    fd = (StorePath(root) / LOCK_NAME).open(os.O_RDWR | os.O_CREAT)  # a regular file, never through a symlink
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(f"{root}: another process is writing this store (lock {LOCK_NAME} is held)") from None
    return fd


def commit(store: "Store", manifest: Manifest) -> None:
    """Steps 4-8: make `manifest` the store's generation (invariant 1), then collect what it no longer names."""
    try:
        write_manifest(store.root, manifest)
    finally:
        if committed(store, manifest.generation):
            # the rename happened (even if the directory fsync after it failed):
            # the new generation is the store's state from now on
            store.manifest = manifest
            store._segments_reset()
    # durable (step 7 done): what the previous generation named and this one does not is garbage now
    failpoint("commit.before_gc")
    try:
        collect_garbage(store.root, manifest)
    except OSError as e:  # the commit stands; the next writable open collects what is left
        warnings.warn(f"{store.root}: committed generation {manifest.generation}, but removing old files failed: {e}",
                      stacklevel=4)


def committed(store: "Store", generation: int) -> bool:
    """Whether the manifest on disk names `generation` (i.e. the rename of step 6 happened)."""
    if store.manifest.generation == generation:
        return True
    try:
        return read_manifest(store.root).generation == generation
    except StoreError:
        return False


def roll_back(store: "Store", error: BaseException, what: str, generation: int, *,
              trees: Iterable[str] = (), segment_files: Iterable[str] = ()) -> None:
    """After `what` failed: remove what commit `generation` wrote unless its rename happened, and say on
    `error` (a note: its type and errno stay as they were) where the store stands.

    trees: directories the commit created, relative to the root ("segments/seg-{G}", a new
    "codec"); segment_files: the names under segments/ it created (bitmaps). Invariant 4: a
    commit's names are its own, so nothing else goes; nothing is removed through a symlink.
    """
    if not committed(store, generation):  # not committed: leave no trace
        for tree in trees:
            _remove_own(store.root, tree, "dir")
        for name in segment_files:
            _remove_own(store.root, f"{SEGMENTS_DIR}/{name}", "file")
    note_failure(store, error, what, generation)


def _remove_own(root: Path, relative: str, kind: str) -> None:
    """Remove root/relative (a "dir" tree or a "file") if it is of that kind, without following a link
    on the way; errors are ignored (a roll-back must not hide the error that caused it)."""
    *parents, name = relative.split("/")
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        for part in parents:
            sub = _open_own_dir(fd, part)
            os.close(fd)
            if sub is None:
                return
            fd = sub
        if kind == "dir":
            shutil.rmtree(name, dir_fd=fd, ignore_errors=True)
        elif _kind(fd, name) == "file":
            os.unlink(name, dir_fd=fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def note_failure(store: "Store", error: BaseException, what: str, generation: int) -> None:
    """Say on the error (a note: its type and errno stay as they were) where the store stands."""
    if committed(store, generation):
        error.add_note(f"lodestore: {what} failed after its commit point: {store.root} is at generation "
                       f"{generation}, which includes the {what}")
    else:
        error.add_note(f"lodestore: {what} failed; nothing was committed: {store.root} is still at "
                       f"generation {generation - 1}")


def manifest_files(manifest: Manifest) -> set[str]:
    """The names under segments/ that a manifest names: its segments and their current bitmaps."""
    return {s.name for s in manifest.segments} | {s.deletes for s in manifest.segments if s.deletes}


# Entries of segments/ this writer creates, and of what type, by the format's name grammar
# (store/_manifest.py, FORMAT.md 4.1): segment directories, deletion bitmaps, and the old
# Index encoding spill (`.spill-{pid}-{generation}`). Nothing else there is ever removed
# (FORMAT.md section 13: garbage is what a writer made).
_OWN_DIRS = (SEGMENT_NAME, SPILL_NAME)
_OWN_FILES = (DELETES_NAME,)


def name_generation(name: str) -> int | None:
    """The generation that created `seg-{G}`, `{segment}.{G}.del` or `.spill-{pid}-{G}` (None for any other name)."""
    for pattern, group in ((SEGMENT_NAME, 1), (DELETES_NAME, 2), (SPILL_NAME, 1)):
        m = pattern.match(name)
        if m is not None:
            return int(m.group(group))
    return None


def _own(name: str, patterns: tuple) -> bool:
    return any(p.match(name) for p in patterns)


def collect_garbage(root: Path, manifest: Manifest) -> None:
    """Remove what the current manifest does not name and no reader can need (FORMAT.md section 13).

    Writer lock held, after `manifest` is durable (invariant 3: nothing a committed manifest
    still names goes). Files an older generation named (superseded bitmaps, compacted
    segments) stay while a live reader lease names them; a later commit or writable open
    removes them. While a lease is unreadable (being stamped), or readers/ is not a plain
    directory, only crash leftovers of commits that never happened (a generation above the
    current one in the name) go.

    Only what this writer creates is ever removed, and never through a symbolic link: the
    store's directories are opened with O_NOFOLLOW and every removal is relative to their
    file descriptors; an entry of segments/ goes only when its name has one of the writer's
    own forms and its type (lstat) is the one that form is written as. A segments/ that is a
    symlink is not entered; codec/ and projection/ go only when they are real directories.
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(FileNotFoundError):  # the writer's own temp name: a link goes, not its target
            os.unlink(MANIFEST_NAME + ".tmp", dir_fd=root_fd)
        seg_fd = _open_own_dir(root_fd, SEGMENTS_DIR)
        if seg_fd is not None:
            try:
                _collect_segments(root, root_fd, seg_fd, manifest)
            finally:
                os.close(seg_fd)
        if manifest.codec is None:
            for name in (CODEC_DIR, PROJECTION_DIR):
                if _kind(root_fd, name) == "dir":
                    shutil.rmtree(name, dir_fd=root_fd, ignore_errors=True)
    finally:
        os.close(root_fd)


def _collect_segments(root: Path, root_fd: int, seg_fd: int, manifest: Manifest) -> None:
    """Step 3 of FORMAT.md section 13 on the open segments/ directory `seg_fd`."""
    named = manifest_files(manifest)
    garbage: list[tuple[str, str]] = []  # (name, "dir" | "file")
    with os.scandir(seg_fd) as entries:
        for e in entries:
            if e.name in named:
                continue
            if not (_own(e.name, _OWN_DIRS) or _own(e.name, _OWN_FILES)):
                continue
            if e.is_symlink():  # planted where the writer's own name goes: the link goes, its target never
                garbage.append((e.name, "link"))
            elif _own(e.name, _OWN_DIRS) and e.is_dir(follow_symlinks=False):
                garbage.append((e.name, "dir"))
            elif _own(e.name, _OWN_FILES) and e.is_file(follow_symlinks=False):
                garbage.append((e.name, "file"))
    if garbage:
        readers = _kind(root_fd, READERS_DIR)
        leases = live_leases(root) if readers in ("dir", None) else [(UNKNOWN, None)]  # never a linked readers/
        if any(files is None for _, files in leases):
            garbage = [(n, k) for n, k in garbage if (name_generation(n) or 0) > manifest.generation]
        pinned = set().union(*[files for _, files in leases if files is not None])
        garbage = [(n, k) for n, k in garbage if n not in pinned]
    for name, kind in garbage:
        if kind == "dir":
            shutil.rmtree(name, dir_fd=seg_fd, ignore_errors=True)  # fd-based: refuses a link, never follows one
        elif _kind(seg_fd, name) in ("file", "link"):  # a regular file or a link: unlink the entry itself
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=seg_fd)


def _open_own_dir(dir_fd: int, name: str) -> int | None:
    """An fd of directory `name` under `dir_fd`; None when it is missing, a symlink or not a directory."""
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink
            return None
        raise


def _kind(dir_fd: int, name: str) -> str | None:
    """What `name` under `dir_fd` is, without following a link: "dir", "file", "link", "other" or None (absent)."""
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return "link"
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"
