"""ShardedSearcher: one query (or a batch) fanned out to every shard, the global top-k merged.

Each shard answers with its own top-k by exact MaxSim (its Searcher, or exhaustive MaxSim);
scores are comparable across shards because every shard holds the same codec. The merge keeps
the best k by score, ties broken by id, so the result does not depend on which shard answered
first. Shards run in threads of this process (ray_address=None) or as Ray actors
(lodestore/sharded/_ray.py), each holding one ShardReader (lodestore/sharded/_shard.py).
"""

from __future__ import annotations

import heapq
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Sequence

from lodestore.store import as_numpy

from ._errors import ShardError, ShardTimeoutError
from ._manifest import read_root, route
from ._shard import ShardReader

Hit = tuple[str, float]


class ShardedHits(list):
    """One query's merged hits (a list of (id, score), best first), with where they came from.

    partial: some shard did not answer (allow_partial=True); missing: those shards' names;
    generations: the generation each answering shard searched, by shard name.
    """

    def __init__(self, hits: list[Hit], *, partial: bool = False, missing: tuple[str, ...] = (),
                 generations: dict[str, int] | None = None):
        super().__init__(hits)
        self.partial, self.missing, self.generations = partial, missing, dict(generations or {})


def merge(per_shard: list[list[Hit]], k: int) -> list[Hit]:
    """The global top-k of the shards' top-k lists: score descending, ties by id ascending."""
    return heapq.nsmallest(k, (h for hits in per_shard for h in hits), key=lambda h: (-h[1], h[0]))


class ThreadShards:
    """The in-process fan-out: one ShardReader per shard, searched by a thread each."""

    mode = "threads"

    def __init__(self, names: list[str], paths: list[str], options: dict[str, Any]):
        self.names, self.paths, self.options = names, paths, options
        # a shard that cannot open keeps its error and reports it at each call (as a Ray actor does),
        # so allow_partial answers without it; refresh() tries to open it again
        self.readers: list[ShardReader | None] = [None] * len(names)
        self.errors: list[BaseException | None] = [None] * len(names)
        for i in range(len(names)):
            self._open(i)
            if isinstance(self.errors[i], ValueError):  # the caller's options, not the shard: refuse now
                self.close()
                raise self.errors[i]
        self._locks = [threading.Lock() for _ in names]  # one call at a time per shard's Searcher
        self._pool = ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="lodestore-shard")

    def _open(self, i: int) -> None:
        try:
            self.readers[i], self.errors[i] = ShardReader(self.names[i], self.paths[i], self.options), None
        except Exception as e:
            self.errors[i] = e

    def call(self, method: str, args_per_shard: list[tuple], timeout_s: float | None) -> list[Any]:
        """Run reader.<method>(*args) on every shard; per shard its result or the exception it raised."""
        def run(i: int):
            with self._locks[i]:
                if self.readers[i] is None and method == "refresh":
                    self._open(i)
                    if self.readers[i] is not None:
                        return True
                if self.readers[i] is None:
                    raise self.errors[i]  # type: ignore[misc]
                return getattr(self.readers[i], method)(*args_per_shard[i])

        futures = [self._pool.submit(run, i) for i in range(len(self.readers))]
        wait(futures, timeout=timeout_s)
        out: list[Any] = []
        for i, f in enumerate(futures):
            if not f.done():
                out.append(TimeoutError(f"no answer within {timeout_s} s"))
            elif f.exception() is not None:
                out.append(f.exception())
            else:
                out.append(f.result())
        return out

    def close(self) -> None:
        """Close every shard's Searcher, after the calls still running (a timed-out shard's) end."""
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for r in self.readers:
            if r is not None:
                r.close()


class ShardedSearcher:
    """Searches a sharded store: every shard's top-k, merged (ties by id), per-shard generations reported.

    ray_address: None runs the shards in threads of this process; "local" starts a local Ray
    instance; "auto" or an address joins a running cluster (as ray.init takes it). With Ray each
    shard is an actor holding one Searcher, on a node offering the shard's resource (the root
    manifest's per-shard `resource`), restarted by Ray when it dies (ray_options: max_restarts,
    max_task_retries, num_cpus). timeout_s: how long a query waits for a shard (None: no limit).
    searcher_options: each shard's Searcher's (memory_budget, nprobe, ndocs, threads, ...).
    """

    def __init__(self, root: str | os.PathLike, ray_address: str | None = None, *, timeout_s: float | None = None,
                 ray_options: dict[str, Any] | None = None, **searcher_options: Any):
        self.root = Path(root)
        self.manifest = read_root(self.root)
        if self.manifest.codec is None:
            raise ValueError(f"{self.root}: the sharded store is empty; add documents before searching")
        names = [e.name for e in self.manifest.shards]
        paths = [str(self.manifest.shard_path(self.root, i)) for i in range(self.manifest.n_shards)]
        self.timeout_s = timeout_s
        if ray_address is None:
            self._shards: Any = ThreadShards(names, paths, searcher_options)
        else:
            from ._ray import RayShards

            self._shards = RayShards(names, paths, [e.resource for e in self.manifest.shards], ray_address,
                                     searcher_options, ray_options or {})
        self.names = names
        self.last_generations: dict[str, int] = {}
        self.last_missing: tuple[str, ...] = ()

    @property
    def mode(self) -> str:
        """"threads" or "ray"."""
        return self._shards.mode

    def search(self, query: Any, k: int = 10, subset: Sequence[str] | None = None, *, allow_partial: bool = False,
               timeout_s: float | None = None, exhaustive: bool = False) -> ShardedHits | list[ShardedHits]:
        """Top-k (id, score) over every shard, best first; same shapes as Searcher.search.

        A shard that fails or does not answer within timeout_s (default: the searcher's) is a
        ShardError naming it, unless allow_partial=True: then the others' merge comes back with
        `partial` set and `missing` naming the shards left out. exhaustive=True: each shard scores
        every live document exactly (the ground truth; no subset).
        """
        if type(k) is not int or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        single = not isinstance(query, (list, tuple)) and as_numpy(query).ndim == 2
        queries = [as_numpy(query)] if single else [as_numpy(q) for q in query]
        if subset is not None:
            if isinstance(subset, (str, bytes)):
                raise ValueError("subset must be a collection of document ids, not one string")
            subset = list(subset)
            parts: list[list[str] | None] = [[subset[p] for p in pos] for pos in route(subset, len(self.names))]
        else:
            parts = [None] * len(self.names)
        outcomes = self._shards.call("search", [(queries, k, part, exhaustive) for part in parts],
                                     self.timeout_s if timeout_s is None else timeout_s)
        answers = self._settle(outcomes, allow_partial)
        missing = tuple(n for n in self.names if n not in answers)
        generations = {n: gen for n, (gen, _) in answers.items()}
        self.last_generations, self.last_missing = generations, missing
        results = [ShardedHits(merge([hits[qi] for _, hits in answers.values()], k), partial=bool(missing),
                               missing=missing, generations=generations) for qi in range(len(queries))]
        return results[0] if single else results

    def _settle(self, outcomes: list[Any], allow_partial: bool) -> dict[str, Any]:
        """The answering shards' results by name; a ShardError for failures unless allow_partial."""
        answers, failed = {}, {}
        for name, out in zip(self.names, outcomes):
            if isinstance(out, BaseException):
                cause = _cause(out)
                if isinstance(cause, ValueError) and not isinstance(cause, TimeoutError):
                    raise ValueError(str(cause)) from out  # the caller's input, refused by the shard
                failed[name] = cause
            else:
                answers[name] = out
        if failed and (not allow_partial or not answers):
            names = tuple(failed)
            detail = "; ".join(f"shard {n}: {type(e).__name__}: {e}" for n, e in failed.items())
            cls = ShardTimeoutError if all(isinstance(e, TimeoutError) for e in failed.values()) else ShardError
            raise cls(f"{len(failed)} of {len(self.names)} shards failed: {detail}", names,
                      {n: str(e) for n, e in failed.items()}) from next(iter(failed.values()))
        return answers

    def refresh(self) -> bool:
        """Move every shard to its newest generation; True when any changed (a failure names the shard)."""
        changed = self._settle(self._shards.call("refresh", [()] * len(self.names), self.timeout_s), False)
        return any(changed.values())

    @property
    def generations(self) -> dict[str, int]:
        """The generation each shard answers from now, by shard name."""
        return {s["shard"]: s["generation"] for s in self.shard_stats()}

    def shard_stats(self) -> list[dict[str, Any]]:
        return list(self._settle(self._shards.call("stats", [()] * len(self.names), self.timeout_s), False).values())

    def stats(self) -> dict[str, Any]:
        """Per-shard Searcher stats (each with its generation and its process's RSS), and the mode."""
        per = self.shard_stats()
        return {"mode": self.mode, "shards": len(per), "generations": {s["shard"]: s["generation"] for s in per},
                "resident_bytes": sum(s.get("resident_bytes", 0) for s in per), "per_shard": per}

    def close(self) -> None:
        self._shards.close()

    def __enter__(self) -> "ShardedSearcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cause(e: BaseException) -> BaseException:
    """The shard's own exception (Ray wraps it as a RayTaskError with .cause)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e
