"""The Ray fan-out: one actor per shard, each holding a ShardReader (its Searcher), placed and restarted by Ray.

Imported only when a ShardedSearcher is given a ray_address: `import lodestore` never imports
Ray (the `lodestore[ray]` extra). Placement: a shard whose root-manifest entry names a
`resource` gets an actor that asks for a sliver of that custom resource, so Ray puts it on the
node started with it (`ray start --resources='{"<resource>": 1}'`), the node whose disk holds
the shard. Faults: an actor that dies is restarted by Ray (max_restarts) and re-opens its shard at
the newest generation; a call in flight when it died is retried on the new actor
(max_task_retries); an actor never dies of its shard's errors (it reports them to the caller).
"""

from __future__ import annotations

from typing import Any

try:
    import ray
except ImportError as e:  # pragma: no cover - exercised where Ray is not installed
    raise ImportError(f"searching shards on Ray needs the optional extra: pip install 'lodestore[ray]' ({e})") from None

from ._shard import ShardReader

#: Defaults for the actors' Ray options (ShardedSearcher's ray_options override them).
DEFAULT_RAY_OPTIONS = {"max_restarts": 4, "max_task_retries": 2, "num_cpus": 0}
#: How much of a shard's custom resource its actor asks for (any positive amount pins it to the node).
RESOURCE_SHARE = 0.001


@ray.remote
class ShardActor:
    """One shard's ShardReader in a Ray worker process. Errors opening it are kept and raised per call,
    so a damaged shard is named to the caller instead of the actor restarting in a loop."""

    def __init__(self, name: str, path: str, options: dict[str, Any]):
        self.args = (name, path, options)
        self.reader: ShardReader | None = None
        self.error: BaseException | None = None
        self._open()

    def _open(self) -> None:
        try:
            self.reader, self.error = ShardReader(*self.args), None
        except Exception as e:
            self.error = e

    def _reader(self) -> ShardReader:
        if self.reader is None:
            raise self.error  # type: ignore[misc]
        return self.reader

    def search(self, queries, k, subset, exhaustive):
        return self._reader().search(queries, k, subset, exhaustive)

    def refresh(self) -> bool:
        if self.reader is None:  # retry the open that failed: the shard may have been repaired
            self._open()
        return self._reader().refresh()

    def stats(self) -> dict[str, Any]:
        out = self._reader().stats()
        out["node_id"] = ray.get_runtime_context().get_node_id()
        return out

    def where(self) -> tuple[str, int]:
        """(node id, pid) of this actor: which node Ray placed it on."""
        import os

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


class RayShards:
    """The Ray fan-out behind ShardedSearcher: the same `call` contract as the thread fan-out."""

    mode = "ray"

    def __init__(self, names: list[str], paths: list[str], resources: list[str | None], address: str,
                 options: dict[str, Any], ray_options: dict[str, Any]):
        self.started = False
        if not ray.is_initialized():
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     log_to_driver=False)
            self.started = address == "local"
        self.names = names
        opts = {**DEFAULT_RAY_OPTIONS, **ray_options}
        self.actors = []
        for name, path, resource in zip(names, paths, resources):
            placed = dict(opts)
            if resource is not None:
                placed["resources"] = {resource: RESOURCE_SHARE}
            self.actors.append(ShardActor.options(**placed).remote(name, path, options))

    def call(self, method: str, args_per_shard: list[tuple], timeout_s: float | None) -> list[Any]:
        """actor.<method>(*args) on every shard; per shard its result or the exception it raised."""
        refs = [getattr(a, method).remote(*args) for a, args in zip(self.actors, args_per_shard)]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        done = set(ready)
        out: list[Any] = []
        for ref in refs:
            if ref not in done:
                ray.cancel(ref)
                out.append(TimeoutError(f"no answer within {timeout_s} s"))
                continue
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayError as e:
                out.append(e)
        return out

    def where(self) -> list[tuple[str, int]]:
        """(node id, pid) of every shard's actor."""
        return ray.get([a.where.remote() for a in self.actors])

    def close(self) -> None:
        try:
            ray.get([a.close.remote() for a in self.actors], timeout=30)
        except ray.exceptions.RayError:
            pass
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        if self.started:
            ray.shutdown()
