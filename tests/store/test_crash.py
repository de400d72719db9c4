"""A writer SIGKILLed at every step of add and delete: the store opens, verifies, and holds
exactly the state before or after the interrupted commit (FORMAT.md section 12)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import store

DIM = 16

WRITER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import store
    path, op, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
    with store.Store.open(path, writable=True) as s:
        if op == "add":
            rng = np.random.default_rng(7)
            docs = [rng.standard_normal((n, %d)) for n in (5, 9, 3, 12, 7)]
            s.add([f"{prefix}{i}" for i in range(5)], docs)
        elif op == "first-add":
            rng = np.random.default_rng(8)
            s.add([f"d{i}" for i in range(6)], [rng.standard_normal((6, %d)) for _ in range(6)])
        else:
            s.delete(["d1", "d4"])
    print("finished")
""" % (DIM, DIM))

ADD_STEPS = ["add.batch_written", "add.segment_written", "add.before_commit", "manifest.before_write",
             "manifest.before_fsync", "manifest.before_rename", "manifest.before_dir_fsync"]
FIRST_ADD_STEPS = ["add.codec_written"] + ADD_STEPS
DELETE_STEPS = ["delete.before_commit", "manifest.before_write", "manifest.before_fsync",
                "manifest.before_rename", "manifest.before_dir_fsync"]


def snapshot(path) -> dict[str, np.ndarray]:
    with store.Store.open(path) as s:
        report = s.verify()
        assert report.ok, str(report)
        return {i: s.get(i) for i in s.ids()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def run_writer(path, op: str, kill_at: str | None, prefix: str = "new") -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if kill_at:
        env["LODESTORE_FAILPOINT_KILL"] = kill_at
    return subprocess.run([sys.executable, "-c", WRITER, str(path), op, prefix], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def populated(tmp_path):
    path = tmp_path / "s"
    rng = np.random.default_rng(1)
    with store.Store.create(path, dim=DIM, nbits=2, num_centroids=16) as s:
        s.add([f"d{i}" for i in range(8)], [rng.standard_normal((int(n), DIM)) for n in rng.integers(3, 15, 8)])
    return path


def check_kill(path, op: str, step: str) -> None:
    before = snapshot(path)
    proc = run_writer(path, op, step)
    assert proc.returncode == -signal.SIGKILL, (step, proc.returncode, proc.stderr)
    assert "finished" not in proc.stdout
    after_kill = snapshot(path)  # opens read-only, verify() passes
    # recovery: a writable open collects the leftovers; the result must not change
    with store.Store.open(path, writable=True):
        pass
    assert same(snapshot(path), after_kill)
    if step == "manifest.before_dir_fsync":  # the rename happened: the commit is visible
        assert not same(after_kill, before)
    else:
        assert same(after_kill, before), f"killed at {step}: state changed"
    # the store still takes writes, and a full run lands
    proc = run_writer(path, "add", None, prefix="later")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.crash
@pytest.mark.parametrize("step", ADD_STEPS)
def test_kill_during_add(populated, step):
    check_kill(populated, "add", step)


@pytest.mark.crash
@pytest.mark.parametrize("step", DELETE_STEPS)
def test_kill_during_delete(populated, step):
    check_kill(populated, "delete", step)


@pytest.mark.crash
@pytest.mark.parametrize("step", FIRST_ADD_STEPS)
def test_kill_during_the_first_add_leaves_an_empty_store(tmp_path, step):
    path = tmp_path / "s"
    store.Store.create(path, dim=DIM, nbits=2, num_centroids=16).close()
    proc = run_writer(path, "first-add", step)
    assert proc.returncode == -signal.SIGKILL, (step, proc.stderr)
    with store.Store.open(path, writable=True) as s:  # collects a half-written codec/segment
        want = 6 if step == "manifest.before_dir_fsync" else 0
        assert len(s) == want and s.verify().ok
        if want == 0:
            assert not (path / "codec").exists() and not any((path / "segments").iterdir())
