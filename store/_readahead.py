"""Read ahead: a source's next batch is read (or generated) in a thread while the current one is encoded.

An add is a loop of read batch -> encode -> write; reading (a bundle's rows, a generated corpus,
a projection) and encoding use different resources, so on a 2-core machine the next batch can be
ready when the encoder asks for it (docs/BENCHMARKS.md section C20). At most `depth` batches wait,
so memory stays bounded by depth + 1 batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


def read_ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Yield `items` in order, each produced by a background thread while the previous one is used.

    An exception raised by the producer is raised here, at the item it failed on. Closing the
    generator early (an error in the consumer) stops the producer after its current item.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry: tuple[bool, object]) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, _END))
        except BaseException as e:  # handed to the consumer, raised there
            put((False, e))

    worker = threading.Thread(target=produce, name="lodestore-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item  # type: ignore[misc]
            if item is _END:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()
