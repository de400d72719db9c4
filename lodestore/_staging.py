"""The writer's scratch space in a store: ``staging/`` (FORMAT.md section 4).

The Index encodes a batch of texts into ``staging/spill-{pid}-{G}/`` (an embedding
bundle, ``G`` the generation it will commit) and hands that to the store, which copies
it into a new segment; the spill is removed whatever happens. Nothing under
``staging/`` is ever named by a manifest, so a spill can never be taken for a segment.

Only the holder of the writer lock stages, so right after a writer took the lock every
spill there is the leftover of a writer that died: :func:`clean_staging` removes those
(the Index calls it when it opens a store writable). It follows no symlink: a
``staging`` that is not a real directory is refused, and only entries named like a spill
that are real directories are removed, through a descriptor of ``staging/`` itself.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lodestore.store import Store, StoreError

STAGING_DIR = "staging"
_SPILL = re.compile(r"^spill-\d+-\d+$")
#: Where the Index spilled before staging/ existed (segments/.spill-{pid}-{G}): its own leftovers.
_LEGACY_DIR, _LEGACY_SPILL = "segments", re.compile(r"^\.spill-\d+-\d+$")


@contextmanager
def spill_dir(store: Store) -> Iterator[Path]:
    """A new, empty ``staging/spill-{pid}-{G}`` of a writable store; removed on exit, with
    ``staging/`` when nothing else is left in it."""
    if not store.writable:
        raise StoreError("store opened read-only: use Index.open(path, writable=True) to add documents")
    staging = store.root / STAGING_DIR
    try:
        staging.mkdir()
    except FileExistsError:
        pass
    _open_real_dir(staging).close()  # a symlink or a file in its place is refused, not followed
    spill = staging / f"spill-{os.getpid()}-{store.generation + 1}"
    spill.mkdir()
    try:
        yield spill
    finally:
        shutil.rmtree(spill, ignore_errors=True)
        try:
            staging.rmdir()
        except OSError:
            pass  # not empty (someone else's file) or already gone


def clean_staging(root: Path) -> list[str]:
    """Remove spills left by writers that died; returns their paths.

    The caller has just taken the writer lock (so no live writer is staging).
    """
    removed = [f"{STAGING_DIR}/{name}" for name in _remove_matching(root / STAGING_DIR, _SPILL)]
    removed += [f"{_LEGACY_DIR}/{name}" for name in _remove_matching(root / _LEGACY_DIR, _LEGACY_SPILL)]
    try:
        (root / STAGING_DIR).rmdir()  # rmdir never follows a symlink
    except OSError:
        pass  # absent, or holds something that is not ours
    return removed


def _remove_matching(folder: Path, pattern: re.Pattern[str]) -> list[str]:
    """Remove the real directories in ``folder`` whose names match, without following any symlink."""
    if not os.path.lexists(folder):
        return []
    removed = []
    with _open_real_dir(folder) as handle:
        for entry in os.scandir(handle.fd):
            if pattern.match(entry.name) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.name, dir_fd=handle.fd)
                removed.append(entry.name)
    return removed


class _open_real_dir:
    """A descriptor of ``path``, which must be a directory and not a symlink (else StoreError)."""

    def __init__(self, path: Path) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            kind = "a symlink" if path.is_symlink() else "not a directory"
            raise StoreError(f"{path} is {kind}; a store's {path.name}/ must be a real directory") from None

    def __enter__(self) -> _open_real_dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        os.close(self.fd)
