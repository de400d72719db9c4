"""A commit that fails part way leaves the store exactly at its previous generation.

Every named failpoint of the commit protocol (store/_writer.py, store/_commit.py, store/_fs.py) is made
to raise, and os.fsync / os.replace / zarr's chunk writes fail with ENOSPC at chosen steps. After
the failure: the handle and a fresh reader see the previous generation with the
previous documents bit for bit, verify() passes, nothing the failed commit wrote
is left behind, retrying the same commit on the failed handle succeeds, and a
reopened writer sees the retried commit.

The one exception is a failure after the manifest's rename (the directory fsync, or
the removal of files the new generation no longer names): the new generation is then
already visible, so the store must be at the new generation, complete, not at a
half-removed one. Operations: first add, add, add of a bundle, delete, compact, and
add with upsert (a new segment and new bitmaps in one commit).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from lodestore import store
from lodestore.store import _compact as compact_mod
from lodestore.store import _fs
from lodestore.store._manifest import MANIFEST_NAME


class Injected(Exception):
    """The fault a failpoint raises."""


def snapshot_files(root: Path) -> dict[str, bytes]:
    """The store's files but the lock and a leftover manifest temp file (collected on the next writable open)."""
    skip = {".lock", MANIFEST_NAME + ".tmp"}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def content(s: store.Store) -> tuple[int, dict[str, np.ndarray]]:
    return s.generation, {i: s.get(i) for i in s.ids()}


def assert_content(s: store.Store, expected: tuple[int, dict[str, np.ndarray]]) -> None:
    generation, docs = expected
    assert s.generation == generation
    assert s.ids() == list(docs)
    for i, tokens in docs.items():
        np.testing.assert_array_equal(s.get(i), tokens)


@pytest.fixture(autouse=True)
def no_failpoints_left():
    yield
    _fs._FAILPOINTS.clear()


# --------------------------------------------------------------------------- operations under test


class Op:
    """One kind of commit to break (the make_op fixture builds its starting store and runs it)."""

    def __init__(self, name: str, *, fresh: bool):
        self.name, self.fresh = name, fresh

    def __repr__(self) -> str:
        return self.name


FIRST_ADD, ADD, ADD_BUNDLE, DELETE = Op("first add", fresh=True), Op("add", fresh=False), Op("add bundle", fresh=False), Op("delete", fresh=False)
COMPACT, UPSERT = Op("compact", fresh=False), Op("upsert", fresh=False)
ADDS = (FIRST_ADD, ADD, ADD_BUNDLE)


@pytest.fixture
def new_docs(clustered_corpus):
    return clustered_corpus(8, 32, seed=55, n_clusters=6, mean_len=30, prefix="new")


@pytest.fixture
def make_op(tmp_path, template_store, new_docs, monkeypatch):
    """factory(op) -> (writable handle at the starting state, callable running the op)."""
    import shutil

    import lodestore.store._ingest as ingest

    def make(op: Op):
        path = tmp_path / "store"
        if op.fresh:
            s = store.Store.create(path, dim=32, nbits=2, num_centroids=16, seed=1)
        else:
            shutil.copytree(template_store, path)
            s = store.Store.open(path, writable=True)
        if op is ADD_BUNDLE:
            bundle = tmp_path / "bundle"
            bundle.mkdir()
            np.save(bundle / "docs.npy", new_docs.tokens.astype(np.float16))
            np.save(bundle / "doclens.npy", new_docs.doclens)
            (bundle / "ids.txt").write_text("\n".join(new_docs.ids))
            monkeypatch.setattr(ingest, "BATCH_TOKENS", 64)  # several batches: fail between them
            return s, lambda: s.add_embeddings(bundle, progress=False)
        if op is DELETE:
            victims = [s.ids()[0], s.ids()[5], s.ids()[-1]]  # both segments
            return s, lambda: s.delete(victims)
        if op is COMPACT:
            monkeypatch.setattr(compact_mod, "COPY_TOKENS", 64)  # several copy steps per segment
            s.delete([s.ids()[0], s.ids()[5], s.ids()[-1]])  # both segments lose a document
            return s, lambda: s.compact()
        if op is UPSERT:
            replaced = [s.ids()[1], s.ids()[-2]]  # a new segment and two bitmaps in one commit
            return s, lambda: s.add(replaced + new_docs.ids[2:], new_docs.docs, upsert=True)
        return s, lambda: s.add(new_docs.ids, new_docs.docs)

    return make


def check_after_failure(s: store.Store, run, before: tuple, files_before: dict) -> None:
    """The failed handle and a fresh reader see `before`; retrying the op on the same
    handle succeeds; a reopened writer sees the retried commit."""
    root = s.root
    assert_content(s, before)
    assert snapshot_files(root) == files_before, "the failed commit left files behind"
    with store.Store.open(root) as reader:
        assert_content(reader, before)
        assert reader.verify().ok
    assert run() == before[0] + 1  # the same commit, retried on the failed handle, goes through
    after = content(s)
    s.close()
    with store.Store.open(root, writable=True) as w:
        assert not (root / (MANIFEST_NAME + ".tmp")).exists()  # collected
        assert_content(w, after)
        assert w.verify().ok


@pytest.fixture
def extra(clustered_corpus):
    return clustered_corpus(3, 32, seed=77, prefix="extra")


# --------------------------------------------------------------------------- failpoints

PRE_RENAME_FAILPOINTS = [
    (FIRST_ADD, "add.codec_written"),
    *[(op, fp) for op in (FIRST_ADD, ADD) for fp in ("add.batch_written", "add.segment_written", "add.before_commit")],
    (ADD_BUNDLE, "add.batch_written"),  # between two batches of a streamed bundle
    *[(op, fp) for op in (FIRST_ADD, ADD, DELETE) for fp in ("manifest.before_write", "manifest.before_fsync", "manifest.before_rename")],
    (DELETE, "delete.before_commit"),
    *[(COMPACT, fp) for fp in ("compact.batch_written", "compact.segment_written", "compact.before_commit",
                               "manifest.before_write", "manifest.before_fsync", "manifest.before_rename")],
    *[(UPSERT, fp) for fp in ("add.segment_written", "add.before_commit", "manifest.before_rename")],
]


def test_every_failpoint_is_covered():
    """Each failpoint the store code names is exercised here (so a new one is not forgotten).

    Covers FORMAT.md section 12's steps 1-8 as a whole: no step without a test below."""
    import re

    root = Path(store.__file__).parent
    named = set()
    for src in root.glob("*.py"):
        text = src.read_text()
        named |= set(re.findall(r'failpoint\("([a-z_.]+)"\)', text))
        named |= {f"manifest.{step}" for step in re.findall(r'failpoint\(f"\{step\}\.([a-z_]+)"\)', text)}
    covered = {fp for _, fp in PRE_RENAME_FAILPOINTS} | set(POST_RENAME_FAILPOINTS)
    assert named and named <= covered, f"failpoints without a test: {sorted(named - covered)}"


@pytest.mark.parametrize("op, failpoint", PRE_RENAME_FAILPOINTS, ids=[f"{op.name}-{fp}" for op, fp in PRE_RENAME_FAILPOINTS])
def test_failpoint_leaves_previous_generation(make_op, op, failpoint):
    """FORMAT.md 12 invariants 1 and 4 and its roll-back rule: a failure before the rename leaves the
    previous generation, complete, and none of the failed commit's files; invariant 5 for a first add
    (no codec/ without a committed segment)."""
    s, run = make_op(op)
    before, files_before = content(s), snapshot_files(s.root)
    hits = []

    def boom():
        hits.append(failpoint)
        raise Injected(failpoint)

    _fs.set_failpoint(failpoint, boom)
    with pytest.raises(Injected):
        run()
    _fs.set_failpoint(failpoint, None)
    assert hits == [failpoint]
    if op is FIRST_ADD:
        assert not (s.root / "codec").exists(), "a codec from an uncommitted first add was left behind"
    check_after_failure(s, run, before, files_before)


@pytest.mark.parametrize("op", [ADD], ids=repr)
def test_interrupt_is_cleaned_up_too(make_op, op):
    """KeyboardInterrupt (a BaseException) mid-segment gets the same clean-up (FORMAT.md 12 invariant 1, roll-back rule)."""
    s, run = make_op(op)
    before, files_before = content(s), snapshot_files(s.root)

    def interrupt():
        raise KeyboardInterrupt

    _fs.set_failpoint("add.segment_written", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run()
    _fs.set_failpoint("add.segment_written", None)
    check_after_failure(s, run, before, files_before)


def expected_after_success(before: tuple, op: Op, new_docs, s_root: Path) -> tuple[int, dict]:
    """The content a successful op would have given (for post-rename failures)."""
    with store.Store.open(s_root) as r:
        got = content(r)
    generation, docs = before
    if op is COMPACT:
        return generation + 1, docs
    if op is UPSERT:  # two documents replaced, six new ones
        assert set(docs) < set(got[1]) and len(got[1]) == len(docs) + 6
        return generation + 1, got[1]
    if op is DELETE:
        assert set(got[1]) < set(docs)
        return generation + 1, {i: t for i, t in docs.items() if i in got[1]}
    return generation + 1, {**docs, **{i: got[1][i] for i in new_docs.ids}}


POST_RENAME_FAILPOINTS = ["manifest.before_dir_fsync", "commit.before_gc"]


@pytest.mark.parametrize("failpoint", POST_RENAME_FAILPOINTS)
@pytest.mark.parametrize("op", [FIRST_ADD, ADD, DELETE, COMPACT, UPSERT], ids=repr)
def test_failure_after_the_rename_keeps_the_new_generation(make_op, new_docs, extra, op, failpoint):
    """The manifest was renamed, then the directory fsync (or the removal of old files)
    failed: the commit is visible, so its files must stay and every handle must agree it happened.

    FORMAT.md 12 invariants 2 and 3: once the rename happened, what the new manifest names is
    complete and is never removed (the writer MUST NOT roll back after step 6)."""
    s, run = make_op(op)
    before = content(s)
    _fs.set_failpoint(failpoint, lambda: (_ for _ in ()).throw(Injected(failpoint)))
    with pytest.raises(Injected) as info:
        run()
    _fs.set_failpoint(failpoint, None)
    assert f"is at generation {before[0] + 1}, which includes the" in info.value.__notes__[0]
    after = expected_after_success(before, op, new_docs, s.root)
    if op in (FIRST_ADD, ADD):
        assert set(new_docs.ids) <= set(after[1])
    assert_content(s, after)
    with store.Store.open(s.root) as reader:
        assert_content(reader, after)
        assert reader.verify().ok
    assert s.add(extra.ids, extra.docs) == after[0] + 1
    s.close()
    with store.Store.open(s.root, writable=True) as w:
        assert w.verify().ok and w.generation == after[0] + 1


# --------------------------------------------------------------------------- ENOSPC from the OS


def enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def count_fsyncs(op_and_run, monkeypatch) -> int:
    """How many os.fsync calls the op makes when nothing fails (on a throwaway copy)."""
    s, run = op_and_run
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    run()
    monkeypatch.setattr(os, "fsync", real)
    s.close()
    return len(calls)


@pytest.fixture(scope="module")
def fsync_counts(tmp_path_factory, template_store, clustered_corpus):
    """op name -> number of os.fsync calls of that op (measured once)."""
    counts = {}
    mp = pytest.MonkeyPatch()
    try:
        for op in (FIRST_ADD, ADD, DELETE, COMPACT):
            root = tmp_path_factory.mktemp("count") / "store"
            new = clustered_corpus(8, 32, seed=55, n_clusters=6, mean_len=30, prefix="new")
            if op.fresh:
                s = store.Store.create(root, dim=32, nbits=2, num_centroids=16, seed=1)
            else:
                import shutil

                shutil.copytree(template_store, root)
                s = store.Store.open(root, writable=True)
            run = (lambda s=s: s.delete([s.ids()[0], s.ids()[5], s.ids()[-1]])) if op is DELETE else (lambda s=s: s.add(new.ids, new.docs))
            if op is COMPACT:
                s.delete([s.ids()[0], s.ids()[5], s.ids()[-1]])
                run = s.compact
            counts[op.name] = count_fsyncs((s, run), mp)
    finally:
        mp.undo()
    return counts


# which fsync call fails, counted from the end of the op: -1 is the directory fsync after
# the manifest's rename, -2 the manifest temp file, -3 the store root; 0 the first call.
FSYNC_POINTS = [0, "middle", -2]


@pytest.mark.parametrize("op", [FIRST_ADD, ADD, DELETE, COMPACT], ids=repr)
@pytest.mark.parametrize("which", FSYNC_POINTS, ids=str)
def test_enospc_in_fsync_leaves_previous_generation(make_op, fsync_counts, monkeypatch, op, which):
    """FORMAT.md 12 invariants 1 and 2: an fsync of steps 2-5 fails, the previous generation stands."""
    n = fsync_counts[op.name]
    k = n // 2 if which == "middle" else (which if which >= 0 else n + which)
    assert 0 <= k < n - 1
    s, run = make_op(op)
    before, files_before = content(s), snapshot_files(s.root)
    calls = []
    real = os.fsync

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) - 1 == k:
            enospc()
        return real(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError) as info:
        run()
    monkeypatch.setattr(os, "fsync", real)
    assert info.value.errno == errno.ENOSPC
    assert "No space left" in str(info.value)  # the OS error reaches the caller as it is, with a note:
    assert info.value.__notes__ == [f"lodestore: {op.name.split()[-1]} failed; nothing was committed: "
                                    f"{s.root} is still at generation {before[0]}"]
    check_after_failure(s, run, before, files_before)


@pytest.mark.parametrize("op", [FIRST_ADD, ADD, DELETE, COMPACT], ids=repr)
def test_enospc_in_the_last_fsync_keeps_the_new_generation(make_op, fsync_counts, new_docs, monkeypatch, op):
    """FORMAT.md 12 invariants 2 and 3: step 7's fsync fails after the rename, the new generation stands."""
    n = fsync_counts[op.name]
    s, run = make_op(op)
    before = content(s)
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: enospc() if (calls.append(fd) or len(calls) == n) else real(fd))
    with pytest.raises(OSError):
        run()
    monkeypatch.setattr(os, "fsync", real)
    after = expected_after_success(before, op, new_docs, s.root)
    assert_content(s, after)
    with store.Store.open(s.root) as reader:
        assert reader.verify().ok
    s.close()


@pytest.mark.parametrize(
    "op, only_manifest", [(ADD, True), (DELETE, True), (FIRST_ADD, False), (COMPACT, True), (COMPACT, False)],
    ids=["add-manifest rename", "delete-manifest rename", "first add-any rename", "compact-manifest rename",
         "compact-any rename"],
)
def test_enospc_in_replace_leaves_previous_generation(make_op, monkeypatch, op, only_manifest):
    """os.replace fails: for the manifest's rename, or for any (zarr also writes every
    chunk file as temp + rename, so then the first zarr write of the op fails).

    FORMAT.md 12 invariant 1: no rename, no new generation; the roll-back removes the new files."""
    s, run = make_op(op)
    before, files_before = content(s), snapshot_files(s.root)
    real = os.replace
    hit = []

    def failing_replace(src, dst, *args, **kwargs):
        if only_manifest and Path(dst).name != MANIFEST_NAME:
            return real(src, dst, *args, **kwargs)
        hit.append(dst)
        enospc()

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError) as info:
        run()
    monkeypatch.setattr(os, "replace", real)
    assert info.value.errno == errno.ENOSPC and hit
    check_after_failure(s, run, before, files_before)


@pytest.mark.parametrize("op", [ADD_BUNDLE, COMPACT], ids=repr)
def test_enospc_while_writing_chunks(make_op, monkeypatch, op):
    """The disk fills while zarr writes the segment's residual chunks (FORMAT.md 12 invariants 1 and 2, step 1)."""
    import zarr.storage._local as local

    s, run = make_op(op)
    before, files_before = content(s), snapshot_files(s.root)
    real_put = local._put
    hit = []

    def filling_put(path, value, *args, **kwargs):
        if "residuals" in str(path) and "/c/" in Path(path).as_posix():
            hit.append(path)
            enospc()
        return real_put(path, value, *args, **kwargs)

    monkeypatch.setattr(local, "_put", filling_put)
    with pytest.raises(OSError):
        run()
    monkeypatch.setattr(local, "_put", real_put)
    assert hit, "zarr no longer writes chunks through zarr.storage._local._put: update this test"
    check_after_failure(s, run, before, files_before)
