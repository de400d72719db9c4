"""lodestore.engine._prefetch.Prefetcher with a fake disk: injected latency, gated reads, injected failures.

No test asserts a duration: waits are on events (with a generous timeout that only
a hung prefetcher reaches), and the fake disk's own latency just widens the
windows in which reads are in flight.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import lodestore
from lodestore.engine._prefetch import Prefetcher

ROWS = 10  # tokens per fake document
RES = 4  # residual bytes per token
DOC_BYTES = ROWS * 2 + ROWS * RES  # uint16 codes + uint8 residuals
TIMEOUT = 20.0


class FakeDisk:
    """A read function for Prefetcher: deterministic rows per doc, call log, latency, gate, failures."""

    def __init__(self, latency: float = 0.0, fail: set[int] | None = None, error: Exception | None = None):
        self.latency = latency
        self.fail = set(fail or ())
        self.error = error or OSError("injected read error")
        self.calls: list[list[int]] = []
        self.io_bytes = 0
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self._lock = threading.Lock()

    @staticmethod
    def rows(doc: int):
        return np.full(ROWS, doc, np.uint16), np.full((ROWS, RES), doc % 251, np.uint8)

    def __call__(self, docs: np.ndarray):
        docs = [int(d) for d in np.asarray(docs)]
        with self._lock:
            self.calls.append(docs)
        self.started.set()
        if self.latency:
            time.sleep(self.latency)
        assert self.gate.wait(TIMEOUT), "fake disk gate never opened"
        if self.fail & set(docs):
            raise self.error
        with self._lock:
            self.io_bytes += len(docs) * DOC_BYTES
        return [self.rows(d) for d in docs], {"bytes": len(docs) * DOC_BYTES, "calls": 1}

    @property
    def n_calls(self) -> int:
        with self._lock:
            return len(self.calls)

    def docs_read(self) -> list[int]:
        with self._lock:
            return [d for c in self.calls for d in c]


def wait_until(cond, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def prefetch_then_release(p: Prefetcher, disk: FakeDisk, docs) -> None:
    """prefetch() with the disk held until it returns, so no read can finish before prefetch()
    has marked its docs in flight (the race tests at the end of the file force the other order)."""
    disk.gate.clear()
    p.prefetch(np.asarray(docs))
    disk.gate.set()


def open_later(disk: FakeDisk, delay: float = 0.05) -> threading.Timer:
    t = threading.Timer(delay, disk.gate.set)
    t.start()
    return t


def held_read(p: Prefetcher, disk: FakeDisk, docs) -> threading.Timer:
    """Start a background read of docs that stays blocked on the disk until a timer releases it
    shortly after: the caller acts while the read is in flight, then joins the timer."""
    disk.gate.clear()
    p.prefetch(np.asarray(docs))
    assert disk.started.wait(TIMEOUT)
    return open_later(disk)


def check_rows(got, docs) -> None:
    assert len(got) == len(docs)
    for (codes, res), d in zip(got, docs):
        want_codes, want_res = FakeDisk.rows(int(d))
        np.testing.assert_array_equal(codes, want_codes)
        np.testing.assert_array_equal(res, want_res)


@pytest.fixture
def make():
    """make(disk, cache_bytes=..., threads=..., task_docs=...) -> a Prefetcher closed after the test."""
    made = []

    def factory(disk, cache_bytes=1 << 20, threads=2, task_docs=32):
        p = Prefetcher(disk, cache_bytes, threads=threads, task_docs=task_docs)
        made.append((p, disk))
        return p

    yield factory
    for p, disk in made:
        disk.gate.set()
        p.close()


def test_prefetched_and_finished_reads_are_hits(make):
    disk = FakeDisk(latency=0.01)
    p = make(disk)
    p.prefetch(np.array([30, 10, 20]))
    wait_until(lambda: p.read_calls == 1, "the background read")
    got = p.get(np.array([10, 20, 30]))
    check_rows(got, [10, 20, 30])
    assert (p.hits, p.waited, p.misses) == (3, 0, 0)
    assert disk.calls == [[10, 20, 30]]  # one read, in ascending doc order; get read nothing more
    assert p.resident_bytes == 3 * DOC_BYTES


def test_reads_in_flight_are_waited_for(make):
    disk = FakeDisk()
    p = make(disk)
    timer = held_read(p, disk, [5, 6])  # the read finishes while get() is blocked on it
    got = p.get(np.array([6, 5]))
    timer.join()
    check_rows(got, [6, 5])
    assert (p.hits, p.waited, p.misses) == (0, 2, 0)
    assert disk.calls == [[5, 6]]
    assert p.io_wait_s >= 0.0


def test_docs_never_prefetched_are_misses_read_in_sorted_order(make):
    disk = FakeDisk()
    p = make(disk)
    got = p.get(np.array([8, 3, 9]))
    check_rows(got, [8, 3, 9])
    assert (p.hits, p.waited, p.misses) == (0, 0, 3)
    assert disk.calls == [[3, 8, 9]]
    # what get() read is cached now
    check_rows(p.get(np.array([9])), [9])
    assert (p.hits, p.misses) == (1, 3)
    assert disk.n_calls == 1


def test_mixed_hit_wait_miss_in_one_get(make):
    disk = FakeDisk()
    p = make(disk, threads=1, task_docs=1)
    p.prefetch(np.array([1]))
    wait_until(lambda: p.read_calls == 1, "doc 1")
    disk.gate.clear()
    p.prefetch(np.array([2]))
    assert disk.started.wait(TIMEOUT)
    timer = open_later(disk)
    got = p.get(np.array([3, 2, 1]))
    timer.join()
    check_rows(got, [3, 2, 1])
    assert (p.hits, p.waited, p.misses) == (1, 1, 1)


def test_prefetch_skips_cached_and_in_flight_docs(make):
    disk = FakeDisk()
    p = make(disk)
    p.prefetch(np.array([1, 2]))
    wait_until(lambda: p.read_calls == 1, "first read")
    disk.gate.clear()
    p.prefetch(np.array([2, 3]))  # 2 cached: only 3 is read
    p.prefetch(np.array([3, 1]))  # 3 in flight, 1 cached: nothing new
    disk.gate.set()
    wait_until(lambda: p.read_calls == 2, "second read")
    assert sorted(disk.docs_read()) == [1, 2, 3]


def test_prefetch_splits_work_into_tasks_of_task_docs_in_priority_order(make):
    disk = FakeDisk()
    p = make(disk, threads=1, task_docs=4)  # one thread: tasks run in the order they were submitted
    p.prefetch(np.arange(10)[::-1])  # best first: 9, 8, ..., 0
    wait_until(lambda: p.read_calls == 3, "three tasks")
    assert disk.calls == [[6, 7, 8, 9], [2, 3, 4, 5], [0, 1]]  # each task sorted for the disk


# --------------------------------------------------------------------------- the cache


def test_cache_is_bounded_and_evicts_least_recently_used(make):
    disk = FakeDisk()
    p = make(disk, cache_bytes=3 * DOC_BYTES, threads=1, task_docs=1)  # one thread: reads finish in order
    prefetch_then_release(p, disk, [0, 1, 2])
    wait_until(lambda: p.read_calls == 3, "three reads")
    assert p.resident_bytes == 3 * DOC_BYTES
    p.get(np.array([0]))  # 0 becomes the most recently used
    prefetch_then_release(p, disk, [3])  # evicts 1, the least recently used
    wait_until(lambda: p.read_calls == 4, "fourth read")
    assert p.resident_bytes <= p.cache_bytes
    p.reset_stats()
    check_rows(p.get(np.array([0, 2, 3])), [0, 2, 3])
    assert (p.hits, p.misses) == (3, 0)
    p.get(np.array([1]))
    assert (p.hits, p.misses) == (3, 1)
    assert p.resident_bytes <= p.cache_bytes


def test_cache_never_exceeds_its_budget_under_load(make):
    disk = FakeDisk(latency=0.001)
    p = make(disk, cache_bytes=7 * DOC_BYTES + 5, task_docs=3)
    rng = np.random.default_rng(0)
    for _ in range(15):
        docs = rng.choice(60, size=12, replace=False)
        p.prefetch(docs)
        check_rows(p.get(docs), docs)
        assert p.resident_bytes <= p.cache_bytes
    assert p.hits + p.waited + p.misses == 15 * 12


def test_a_document_larger_than_the_cache_is_still_returned(make):
    disk = FakeDisk()
    p = make(disk, cache_bytes=DOC_BYTES // 2)
    check_rows(p.get(np.array([4, 5])), [4, 5])
    p.prefetch(np.array([6]))
    wait_until(lambda: p.read_calls == 2, "prefetch")
    check_rows(p.get(np.array([6])), [6])


def test_clear_empties_the_cache(make):
    disk = FakeDisk()
    p = make(disk)
    p.get(np.array([1, 2]))
    assert p.resident_bytes == 2 * DOC_BYTES
    p.clear()
    assert p.resident_bytes == 0
    p.get(np.array([1]))
    assert p.misses == 3


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("error", [OSError("disk on fire"), lodestore.CorruptStoreError("/x/residuals/c/0/0: checksum mismatch")],
                         ids=["OSError", "CorruptStoreError"])
def test_background_read_error_surfaces_in_get(make, error):
    disk = FakeDisk(fail={4}, error=error)
    p = make(disk)
    timer = held_read(p, disk, [4, 7])
    with pytest.raises(type(error), match=str(error).split(":")[0]):
        p.get(np.array([7, 4]))  # waiting on the failed read
    timer.join()
    # once the failed read is over, asking again reads again, and fails again
    with pytest.raises(type(error)):
        p.get(np.array([4]))
    # the prefetcher still works for other documents
    disk.fail.clear()
    check_rows(p.get(np.array([4, 7, 8])), [4, 7, 8])


def test_error_of_a_finished_background_read_is_not_lost(make):
    """A doc whose background read failed before anyone asked is read again by get()."""
    disk = FakeDisk(fail={2})
    p = make(disk, threads=1, task_docs=1)
    prefetch_then_release(p, disk, [2])
    prefetch_then_release(p, disk, [3])  # one thread: once 3 is read, the failed task is over
    wait_until(lambda: p.read_calls == 1, "doc 3")
    with pytest.raises(OSError, match="injected"):
        p.get(np.array([2, 3]))
    disk.fail.clear()  # the disk recovers: the next get reads the doc fine
    check_rows(p.get(np.array([2, 3])), [2, 3])


def test_read_error_in_get_itself_surfaces(make):
    disk = FakeDisk(fail={9})
    p = make(disk)
    with pytest.raises(OSError, match="injected"):
        p.get(np.array([1, 9]))


# --------------------------------------------------------------------------- counters


def test_counters_accumulate_and_reset(make):
    disk = FakeDisk()
    p = make(disk, task_docs=2)
    p.prefetch(np.array([1, 2, 3]))
    wait_until(lambda: p.read_calls == 2, "two tasks")
    assert p.bytes_read == 3 * DOC_BYTES
    p.get(np.array([1, 2, 3, 4, 5]))
    assert p.bytes_read == 5 * DOC_BYTES == disk.io_bytes
    assert p.read_calls == 3 == disk.n_calls
    assert (p.hits, p.waited, p.misses) == (3, 0, 2)
    p.get(np.array([5, 6]))
    assert (p.hits, p.waited, p.misses) == (4, 0, 3)
    assert p.bytes_read == 6 * DOC_BYTES and p.read_calls == 4
    p.reset_stats()
    assert (p.hits, p.waited, p.misses, p.bytes_read, p.read_calls, p.io_wait_s) == (0, 0, 0, 0, 0, 0.0)
    p.get(np.array([1, 7]))
    assert (p.hits, p.misses, p.bytes_read, p.read_calls) == (1, 1, DOC_BYTES, 1)


def test_rereads_of_evicted_docs_are_counted(make):
    disk = FakeDisk()
    p = make(disk, cache_bytes=DOC_BYTES)  # room for one document
    timer = held_read(p, disk, [1, 2])  # one task: 2 evicts 1 as soon as they land
    check_rows(p.get(np.array([1, 2])), [1, 2])  # waits, then finds 1 gone and reads it again
    timer.join()
    assert disk.n_calls == 2  # the disk saw two reads, three documents
    assert (p.read_calls, p.bytes_read) == (disk.n_calls, disk.io_bytes)


def worker_always_wins(p: Prefetcher) -> None:
    """Make every background read finish before prefetch() marks its docs in flight: what a
    preemption right after ThreadPoolExecutor.submit does (and what usually happens on the first
    submit, whose Thread.start() hands the GIL to the new worker, which runs the task at once)."""
    submit = p._pool.submit

    def submit_and_finish(*args, **kwargs):
        fut = submit(*args, **kwargs)
        fut.exception(timeout=TIMEOUT)  # wait for it, whatever it raised
        return fut

    p._pool.submit = submit_and_finish


def test_a_failed_read_that_finishes_before_prefetch_returns_does_not_poison_the_doc(make):
    disk = FakeDisk(fail={2})
    p = make(disk, threads=1, task_docs=1)
    worker_always_wins(p)
    p.prefetch(np.array([2]))
    assert disk.n_calls == 1
    disk.fail.clear()  # a transient error: the disk is fine again
    check_rows(p.get(np.array([2])), [2])


def test_a_read_that_finishes_before_prefetch_returns_leaves_no_stale_state(make):
    disk = FakeDisk()
    p = make(disk, cache_bytes=DOC_BYTES, threads=1, task_docs=1)
    worker_always_wins(p)
    p.prefetch(np.array([1]))
    p.prefetch(np.array([2]))  # evicts 1 (room for one document)
    assert disk.n_calls == 2
    p.prefetch(np.array([1]))  # 1 is neither cached nor being read: it must be read again
    assert disk.n_calls == 3
    p.reset_stats()
    p.get(np.array([1]))
    assert (p.hits, p.waited, p.misses) == (1, 0, 0)


# --------------------------------------------------------------------------- close


def test_close_waits_for_reads_in_flight(make):
    disk = FakeDisk()
    p = make(disk)
    timer = held_read(p, disk, [1, 2])
    p.close()  # returns once the running read is done
    timer.join()
    assert p.read_calls == 1 and p.resident_bytes == 2 * DOC_BYTES
    check_rows(p.get(np.array([1, 2])), [1, 2])  # cached rows stay readable after close
    assert p.hits == 2
    p.close()  # closing twice is harmless


def test_close_with_nothing_pending(make):
    p = make(FakeDisk())
    p.close()
    with pytest.raises(RuntimeError):
        p.prefetch(np.array([1]))  # no new background work after close
