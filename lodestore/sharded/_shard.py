"""One shard's reading side: its Searcher, exhaustive search, refresh and stats.

The same class answers in a thread of the searching process and inside a Ray actor
(lodestore/sharded/_ray.py), so both modes run the same code on a shard. A shard that holds no
document yet has no Searcher (a Searcher refuses an empty store); it answers with no hits and
opens one at the refresh that finds documents.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from lodestore.engine import Searcher, exhaustive_search
from lodestore.server._backend import process_rss  # the one RSS reader (no web framework imported)
from lodestore.store import Store


class ShardReader:
    """Searches one shard's store; `generation` is the generation its answers come from."""

    def __init__(self, name: str, path: str, options: dict[str, Any]):
        self.name, self.path, self.options = name, str(path), dict(options)
        self.searcher: Searcher | None = None
        self.generation = -1
        self._open()

    def _open(self) -> None:
        with Store.open(self.path) as store:
            self.generation = store.generation
            empty = store.manifest.codec is None or not store.manifest.segments
        if not empty:
            try:
                self.searcher = Searcher(self.path, **self.options)
            except ValueError as e:  # emptied between the look and the open: still answers, with no hits
                if "is empty" not in str(e):
                    raise
                return
            self.generation = self.searcher.generation

    def search(self, queries: list[np.ndarray], k: int, subset: Sequence[str] | None,
               exhaustive: bool) -> tuple[int, list[list[tuple[str, float]]]]:
        """(generation, top-k hits per query) of this shard; subset: the ids of it routed here."""
        if self.searcher is None or (subset is not None and not subset):
            return self.generation, [[] for _ in queries]
        if exhaustive:
            if subset is not None:
                raise ValueError("exhaustive search takes no subset")
            hits = exhaustive_search(self.searcher.store, queries, k, fixed_order=True)
        else:
            hits = self.searcher.search(queries, k, subset=subset)
        return self.searcher.generation, hits

    def refresh(self) -> bool:
        """Move to the shard's newest generation; True when it changed."""
        old = self.generation
        if self.searcher is None:
            self._open()
            return self.generation != old
        try:
            changed = self.searcher.refresh()
        except ValueError:  # the newest generation holds no document: answer with none
            self.searcher.close()
            self.searcher = None
            self._open()
            return True
        self.generation = self.searcher.generation
        return changed

    def stats(self) -> dict[str, Any]:
        """The shard's Searcher stats (empty when it has none), with its name, path, generation and RSS."""
        out: dict[str, Any] = self.searcher.stats() if self.searcher is not None else {}
        out.update(shard=self.name, path=self.path, generation=self.generation, pid=os.getpid(),
                   process_rss_bytes=process_rss())
        return out

    def close(self) -> None:
        if self.searcher is not None:
            self.searcher.close()
            self.searcher = None
