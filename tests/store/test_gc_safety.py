"""Garbage collection removes only what the writer itself made inside the store (FORMAT.md
section 13; section 12 invariant 3), and never anything through a symbolic link.

A store directory is input: a planted symlink for segments/, readers/, codec/ or a
segment-like name must not let a writer's collection delete files outside the store.
Whatever the store does with such a directory (use it or refuse it), the outside files stay.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lodestore import store
from lodestore.store._commit import collect_garbage
from lodestore.store._manifest import read_manifest


def fill(folder: Path) -> dict[str, bytes]:
    """An outside directory full of files, some named exactly as a store's garbage would be."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "seg-000077").mkdir()
    (folder / "seg-000077" / "zarr.json").write_bytes(b"{}")
    (folder / "seg-000001.000099.del").write_bytes(b"a bitmap-like name")
    (folder / "seg-000099.000100.del").write_bytes(b"a future bitmap-like name")
    (folder / "precious.txt").write_bytes(b"the user's data")
    (folder / "x.lease").write_bytes(b"{}")
    return snapshot(folder)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


def commit_and_collect(root: Path, ids: list[str]) -> None:
    """A writable open (collects), a delete (a commit that leaves a superseded bitmap) and a compact."""
    try:
        with store.Store.open(root, writable=True) as w:
            w.delete(ids[:1])
            w.delete(ids[1:2])
            w.compact()
    except store.StoreError:
        pass  # refusing the hostile directory is fine too: the outside files are what this checks


def test_a_symlinked_segments_dir_is_never_collected_through(store_copy, template_corpus, tmp_path):
    """Invariant 3 / section 13: GC does not enter a segments/ that is a symlink."""
    outside = tmp_path / "outside"
    shutil.copytree(store_copy / "segments", outside)  # the store's segments live outside now
    shutil.rmtree(store_copy / "segments")
    (store_copy / "segments").symlink_to(outside, target_is_directory=True)
    foreign = fill(outside)
    commit_and_collect(store_copy, template_corpus.ids)
    after = snapshot(outside)
    assert {k: after.get(k) for k in foreign} == foreign, "GC removed or changed files outside the store"


def test_a_segment_name_linked_to_an_outside_file_is_not_deleted_through(store_copy, template_corpus, tmp_path):
    """Section 13: an unnamed entry of segments/ goes only if it is what the writer creates under that
    name (a real directory or regular file); a link named like garbage never reaches its target."""
    outside = tmp_path / "outside"
    foreign = fill(outside)
    segs = store_copy / "segments"
    (segs / "seg-000001.000099.del").symlink_to(outside / "seg-000001.000099.del")  # a stale-bitmap name
    (segs / "seg-000099.000100.del").symlink_to(outside / "seg-000099.000100.del")  # a crash-leftover name
    (segs / "seg-000077").symlink_to(outside / "seg-000077", target_is_directory=True)  # a segment name
    (segs / "seg-000088").symlink_to(outside / "precious.txt")
    commit_and_collect(store_copy, template_corpus.ids)
    assert snapshot(outside) == foreign
    with store.Store.open(store_copy) as r:
        assert r.verify().ok and len(r) == len(template_corpus) - 2


def test_gc_keeps_names_it_does_not_own_and_removes_its_own(store_copy):
    """Section 13: crash leftovers named and typed as the writer makes them go; anything else stays."""
    segs = store_copy / "segments"
    (segs / "seg-000009").mkdir()  # leftovers of a commit that never happened
    (segs / "seg-000009" / "zarr.json").write_bytes(b"{}")
    (segs / "seg-000001.000009.del").write_bytes(b"\0")
    (segs / "README").write_bytes(b"not the writer's")
    (segs / "seg-000010.del").write_bytes(b"not a name the writer makes")
    (segs / "seg-000011.000012.del").mkdir()  # a writer's file name, but a directory: not its own
    with store.Store.open(store_copy, writable=True):
        pass
    names = {p.name for p in segs.iterdir()}
    assert not {"seg-000009", "seg-000001.000009.del"} & names
    assert {"README", "seg-000010.del", "seg-000011.000012.del", "seg-000001", "seg-000002"} <= names


@pytest.mark.parametrize("name", ["codec", "projection"])
def test_a_symlinked_codec_dir_of_an_empty_store_is_left_alone(tmp_path, name):
    """Section 13 step 1 removes codec/ (and projection/) when the manifest has none; a link is not followed."""
    root = tmp_path / "s"
    store.Store.create(root, dim=16, nbits=2).close()
    outside = tmp_path / "outside"
    foreign = fill(outside)
    (root / name).symlink_to(outside, target_is_directory=True)
    collect_garbage(root, read_manifest(root))
    assert snapshot(outside) == foreign
    (root / name).unlink()
    (root / name).mkdir()  # a real leftover directory of a first add that never committed does go
    (root / name / "zarr.json").write_bytes(b"{}")
    collect_garbage(root, read_manifest(root))
    assert not (root / name).exists()


def test_a_symlinked_readers_dir_is_not_scanned(store_copy, template_corpus, tmp_path):
    """Section 13 step 2 removes stale leases from readers/; through a link it would delete outside
    files, so a linked readers/ is treated as an unreadable lease (only crash leftovers go)."""
    outside = tmp_path / "outside"
    foreign = fill(outside)
    (store_copy / "readers").symlink_to(outside, target_is_directory=True)
    (store_copy / "segments" / "seg-000009").mkdir()  # garbage, so that the leases are looked at
    with store.Store.open(store_copy, writable=True) as w:
        assert not (store_copy / "segments" / "seg-000009").exists()  # a crash leftover still goes
        w.delete(template_corpus.ids[:1])
        w.delete(template_corpus.ids[1:2])  # supersedes seg-000001.000003.del: kept, leases unknown
        assert (store_copy / "segments" / "seg-000001.000003.del").exists()
    assert snapshot(outside) == foreign


def test_a_failed_commit_rolls_back_only_its_own_files(store_copy, template_corpus, tmp_path):
    """Section 12: after a failure before the rename the writer removes what it wrote, and only that:
    a bitmap name that already exists (here through a linked segments/, outside the store) was not
    written by the failed delete, so its roll-back leaves it."""
    outside = tmp_path / "outside"
    shutil.copytree(store_copy / "segments", outside)
    shutil.rmtree(store_copy / "segments")
    (store_copy / "segments").symlink_to(outside, target_is_directory=True)
    (outside / "seg-000001.000003.del").write_bytes(b"the user's file, named as the next bitmap")
    foreign = snapshot(outside)
    try:
        with store.Store.open(store_copy, writable=True) as w:
            with pytest.raises(OSError):
                w.delete(template_corpus.ids[:1])  # its bitmap name exists: the exclusive create fails
            assert w.generation == 2
    except store.StoreError:
        pass  # refusing the linked segments/ at open is fine too
    assert snapshot(outside) == foreign
