"""The sharded store's errors: a shard that failed or timed out, named."""

from __future__ import annotations

from lodestore.store import StoreError


class ShardError(StoreError):
    """A shard failed (or timed out); `shards` names every failed shard, `errors` their messages."""

    def __init__(self, message: str, shards: tuple[str, ...] = (), errors: dict[str, str] | None = None):
        super().__init__(message)
        self.shards = shards
        self.errors = errors or {}


class ShardTimeoutError(ShardError, TimeoutError):
    """Every failed shard of a query timed out (a ShardError, and a TimeoutError)."""
