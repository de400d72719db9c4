"""store/_readahead.py: a source's batches produced in a thread, in order, errors where they happened."""

from __future__ import annotations

import threading
import time
from contextlib import closing

import pytest
from hypothesis import given, strategies as st

from lodestore.store._readahead import read_ahead


@given(st.lists(st.integers()), st.integers(1, 4))
def test_yields_every_item_in_order(items, depth):
    assert list(read_ahead(iter(items), depth)) == items


def test_producer_error_is_raised_at_its_item():
    def gen():
        yield 1
        yield 2
        raise ValueError("document 3 is bad")

    got = []
    with pytest.raises(ValueError, match="document 3 is bad"):
        for x in read_ahead(gen()):
            got.append(x)
    assert got == [1, 2]


def test_runs_ahead_by_at_most_depth_and_stops_when_closed():
    produced = []
    started = threading.Event()

    def gen():
        for i in range(100):
            produced.append(i)
            started.set()
            yield i

    with closing(read_ahead(gen(), depth=1)) as it:
        assert next(it) == 0
        time.sleep(0.3)  # the producer fills the queue (1 waiting) and holds one more
        assert len(produced) <= 3
    n = len(produced)
    time.sleep(0.2)
    assert len(produced) == n  # closed: the producer stopped
    assert not any(t.name == "lodestore-read-ahead" and t.is_alive() for t in threading.enumerate())


def test_consumer_error_stops_the_producer():
    def gen():
        yield from range(10**9)

    with pytest.raises(RuntimeError):
        with closing(read_ahead(gen())) as it:
            for x in it:
                if x == 5:
                    raise RuntimeError("encode failed")
    assert not any(t.name == "lodestore-read-ahead" and t.is_alive() for t in threading.enumerate())
