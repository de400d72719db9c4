"""One writer at a time: the writer lock (flock on <store>/.lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lodestore import store
from lodestore.store import StoreLockedError

ROOT = Path(__file__).resolve().parents[2]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_second_writer_in_the_same_process_is_refused(store_copy):
    first = store.Store.open(store_copy, writable=True)
    fds = open_fds()
    with pytest.raises(StoreLockedError) as info:
        store.Store.open(store_copy, writable=True)
    assert str(store_copy) in str(info.value) and "lock" in str(info.value)
    assert open_fds() == fds  # the refused open closed its file descriptor
    first.close()
    store.Store.open(store_copy, writable=True).close()  # free again after close


def test_create_holds_the_lock(tmp_path):
    with store.Store.create(tmp_path / "s", dim=16) as s:
        assert s.writable
        with pytest.raises(StoreLockedError):
            store.Store.open(tmp_path / "s", writable=True)
    store.Store.open(tmp_path / "s", writable=True).close()


def test_context_manager_releases_the_lock_on_error(store_copy):
    with pytest.raises(RuntimeError):
        with store.Store.open(store_copy, writable=True):
            raise RuntimeError("boom")
    store.Store.open(store_copy, writable=True).close()


def test_readers_do_not_need_the_lock(store_copy, template_corpus):
    with store.Store.open(store_copy, writable=True):
        with store.Store.open(store_copy) as r1, store.Store.open(store_copy) as r2:
            assert r1.ids() == r2.ids() == template_corpus.ids


HOLDER = textwrap.dedent(
    """
    import sys
    from lodestore import store
    s = store.Store.open(sys.argv[1], writable=True)
    print("locked", flush=True)
    sys.stdin.readline()
    s.close()
    print("released", flush=True)
    sys.stdin.readline()
    """
)


@pytest.fixture
def holder(store_copy):
    """A child process holding the store's writer lock until told (or killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store_copy)], cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == "locked", proc.stderr.read()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()


def test_second_writer_in_another_process_is_refused(store_copy, holder):
    with pytest.raises(StoreLockedError):
        store.Store.open(store_copy, writable=True)
    with store.Store.open(store_copy) as reader:  # reading is fine meanwhile
        assert reader.generation == 2
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "released"
    store.Store.open(store_copy, writable=True).close()


def test_a_killed_writer_leaves_no_stale_lock(store_copy, holder):
    with pytest.raises(StoreLockedError):
        store.Store.open(store_copy, writable=True)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=60)
    assert (store_copy / ".lock").exists()  # the file stays; the lock died with its process
    with store.Store.open(store_copy, writable=True) as s:
        assert s.verify().ok


def test_a_closed_writer_cannot_commit(store_copy, template_corpus, clustered_corpus):
    """After close() a handle no longer holds the lock, so it must not write (another
    writer may hold the lock by then, and two writers would overwrite each other's commits)."""
    extra = clustered_corpus(2, 32, seed=5, prefix="late")
    with store.Store.open(store_copy, writable=True) as s:
        pass
    other = store.Store.open(store_copy, writable=True)
    for change in (lambda: s.add(extra.ids, extra.docs), lambda: s.delete([template_corpus.ids[0]])):
        with pytest.raises(store.StoreError, match="closed"):
            change()
    assert other.add(extra.ids, extra.docs) == 3
    other.close()
    assert s.get(template_corpus.ids[0]).shape == template_corpus.docs[0].shape  # reading still works
