"""A writer SIGKILLed at every step of add, delete, compact and upsert: the store opens, verifies,
and holds exactly the state before or after the interrupted commit (FORMAT.md section 12),
compared document by document (ids in store order, decoded token matrices) and by generation.

tools/soak_crash.py is the long version: it kills at every fsync as well (>= 200 points).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lodestore import store

DIM = 16

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from lodestore import store
    from lodestore.store import _compact
    _compact.COPY_TOKENS = 16  # several copy steps
    path, op, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
    with store.Store.open(path, writable=True) as s:
        if op == "add":
            rng = np.random.default_rng(7)
            docs = [rng.standard_normal((n, %d)) for n in (5, 9, 3, 12, 7)]
            s.add([f"{prefix}{i}" for i in range(5)], docs)
        elif op == "first-add":
            rng = np.random.default_rng(8)
            s.add([f"d{i}" for i in range(6)], [rng.standard_normal((6, %d)) for _ in range(6)])
        elif op == "meta-add":
            rng = np.random.default_rng(10)
            meta = [{"year": 2000 + i, "lang": "en" if i %% 2 else "fr", "tags": ["t%%d" %% i], "w": i / 4}
                    for i in range(5)]
            s.add([f"{prefix}{i}" for i in range(5)], [rng.standard_normal((4, %d)) for _ in range(5)],
                  metadata=meta)
        elif op == "compact":
            s.compact()
        elif op == "upsert":
            rng = np.random.default_rng(9)
            s.add(["d2", "e1", f"{prefix}0"], [rng.standard_normal((4, %d)) for _ in range(3)], upsert=True)
        else:
            s.delete(["d1", "d4"])
    print("finished")
""" % (DIM, DIM, DIM, DIM))

COMMIT_STEPS = ["manifest.before_write", "manifest.before_fsync", "manifest.before_rename",
                "manifest.before_dir_fsync", "commit.before_gc"]
AFTER_THE_RENAME = {"manifest.before_dir_fsync", "commit.before_gc"}  # the commit is visible
ADD_STEPS = ["add.batch_written", "add.segment_written", "add.before_commit"] + COMMIT_STEPS
FIRST_ADD_STEPS = ["add.codec_written"] + ADD_STEPS
DELETE_STEPS = ["delete.before_commit"] + COMMIT_STEPS
COMPACT_STEPS = ["compact.batch_written", "compact.segment_written", "compact.before_commit"] + COMMIT_STEPS
UPSERT_STEPS = ["add.segment_written", "add.before_commit", "manifest.before_rename", "commit.before_gc"]


def snapshot(path) -> tuple[int, dict[str, np.ndarray], tuple]:
    """(generation, id -> decoded tokens, (metadata fields, every document's metadata))."""
    with store.Store.open(path) as s:
        report = s.verify()
        assert report.ok, str(report)
        ids = s.ids()
        return s.generation, {i: s.get(i) for i in ids}, (s.metadata_fields, s.get_metadata(ids))


def same(a: tuple, b: tuple) -> bool:
    return (a[0] == b[0] and list(a[1]) == list(b[1])
            and all(np.array_equal(a[1][k], b[1][k]) for k in a[1]) and a[2] == b[2])


def run_writer(path, op: str, kill_at: str | None, prefix: str = "new") -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if kill_at:
        env["LODESTORE_FAILPOINT_KILL"] = kill_at
    return subprocess.run([sys.executable, "-c", WRITER, str(path), op, prefix], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Two segments and a deletion: add, delete, compact and upsert all have work to do."""
    path = tmp_path_factory.mktemp("crash") / "base"
    rng = np.random.default_rng(1)
    with store.Store.create(path, dim=DIM, nbits=2, num_centroids=16) as s:
        s.add([f"d{i}" for i in range(8)], [rng.standard_normal((int(n), DIM)) for n in rng.integers(3, 15, 8)])
        s.add([f"e{i}" for i in range(4)], [rng.standard_normal((int(n), DIM)) for n in rng.integers(3, 15, 4)])
        s.delete(["d6"])
    return path


@pytest.fixture(scope="module")
def after_states(base, tmp_path_factory):
    """op -> the state a writer that is not killed leaves (computed once per op)."""
    cache = {}

    def get(op: str):
        if op not in cache:
            path = tmp_path_factory.mktemp("after") / "s"
            shutil.copytree(base, path)
            proc = run_writer(path, op, None)
            assert proc.returncode == 0, proc.stderr
            cache[op] = snapshot(path)
        return cache[op]

    return get


@pytest.fixture
def populated(base, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(base, path)
    return path


def check_kill(path, op: str, step: str, after: tuple) -> None:
    """Killed at `step`: the store is exactly the state before or after (FORMAT.md 12 invariants 1, 2
    and 4), and a writable open's collection removes the leftovers and nothing named (invariant 3)."""
    before = snapshot(path)
    proc = run_writer(path, op, step)
    assert proc.returncode == -signal.SIGKILL, (step, proc.returncode, proc.stderr)
    assert "finished" not in proc.stdout
    after_kill = snapshot(path)  # opens read-only, verify() passes
    # recovery: a writable open collects the leftovers; the result must not change
    with store.Store.open(path, writable=True) as w:
        named = {e.name for e in w.manifest.segments} | {e.deletes for e in w.manifest.segments if e.deletes}
    assert same(snapshot(path), after_kill)
    assert {p.name for p in (path / "segments").iterdir()} == named, "leftovers survived recovery"
    expected = after if step in AFTER_THE_RENAME else before
    assert same(after_kill, expected), f"killed at {step}: neither the expected state nor generation"
    # the store still takes writes
    rng = np.random.default_rng(3)
    with store.Store.open(path, writable=True) as w:
        w.add(["later0", "later1"], [rng.standard_normal((4, DIM)) for _ in range(2)])
        assert w.verify().ok


@pytest.mark.crash
@pytest.mark.parametrize("step", ADD_STEPS)
def test_kill_during_add(populated, after_states, step):
    """FORMAT.md 12 invariants 1-4 (check_kill) for an add."""
    check_kill(populated, "add", step, after_states("add"))


@pytest.mark.crash
@pytest.mark.parametrize("step", ADD_STEPS)
def test_kill_during_add_with_metadata(populated, after_states, step):
    """An add with typed metadata (new fields: the manifest's metadata_fields and writer feature change in the
    same commit): before or after exactly, metadata included."""
    after = after_states("meta-add")
    assert after[2][0] == {"year": "int", "lang": "str", "tags": "tags", "w": "float"}
    check_kill(populated, "meta-add", step, after)


@pytest.mark.crash
@pytest.mark.parametrize("step", ["compact.batch_written", "compact.before_commit", "manifest.before_rename",
                                  "commit.before_gc"])
def test_kill_during_compact_with_metadata(populated, tmp_path, step):
    """Compaction carries metadata (documents with and without it): before or after exactly."""
    assert run_writer(populated, "meta-add", None).returncode == 0
    reference = tmp_path / "reference"
    shutil.copytree(populated, reference)
    assert run_writer(reference, "compact", None).returncode == 0
    after = snapshot(reference)
    assert after[2][1][-1] == {"year": 2004, "lang": "fr", "tags": ["t4"], "w": 1.0}
    check_kill(populated, "compact", step, after)


@pytest.mark.crash
@pytest.mark.parametrize("step", DELETE_STEPS)
def test_kill_during_delete(populated, after_states, step):
    """FORMAT.md 12 invariants 1-4 (check_kill) and 6 (bitmaps match their entries) for a delete."""
    check_kill(populated, "delete", step, after_states("delete"))


@pytest.mark.crash
@pytest.mark.parametrize("step", COMPACT_STEPS)
def test_kill_during_compact(populated, after_states, step):
    """FORMAT.md 12 invariants 1-4 (check_kill) for a compaction: old segments go only after the rename."""
    after = after_states("compact")
    assert len(after[1]) == 11  # d6 is gone from the compacted store; content otherwise unchanged
    check_kill(populated, "compact", step, after)
    with store.Store.open(populated) as s:
        assert len(s.manifest.segments) == (2 if step in AFTER_THE_RENAME else 3)  # + the later add


@pytest.mark.crash
@pytest.mark.parametrize("step", UPSERT_STEPS)
def test_kill_during_upsert(populated, after_states, step):
    """FORMAT.md 12 invariants 1-4 (check_kill) and 7 (live ids stay unique) for an upsert."""
    check_kill(populated, "upsert", step, after_states("upsert"))


@pytest.mark.crash
@pytest.mark.parametrize("step", FIRST_ADD_STEPS)
def test_kill_during_the_first_add_leaves_an_empty_store(tmp_path, step):
    """FORMAT.md 12 invariant 5: no codec without a committed segment; recovery removes a half-written codec/."""
    path = tmp_path / "s"
    store.Store.create(path, dim=DIM, nbits=2, num_centroids=16).close()
    proc = run_writer(path, "first-add", step)
    assert proc.returncode == -signal.SIGKILL, (step, proc.stderr)
    with store.Store.open(path, writable=True) as s:  # collects a half-written codec/segment
        want = 6 if step in AFTER_THE_RENAME else 0
        assert len(s) == want and s.verify().ok
        if want == 0:
            assert not (path / "codec").exists() and not any((path / "segments").iterdir())


@pytest.mark.crash
def test_soak_tool_runs_at_a_tiny_size(tmp_path, capsys):
    """tools/soak_crash.py end to end (kept small: the named failpoints above cover every operation)."""
    from tools import soak_crash

    assert soak_crash.main(["--workdir", str(tmp_path), "--ops", "delete,compact", "--points", "2", "--random", "1",
                            "--docs", "12"]) == 0
    out = capsys.readouterr().out
    assert "| **all** | | 4 | 2 |" in out and "| compact |" in out and "| 0 |" in out
