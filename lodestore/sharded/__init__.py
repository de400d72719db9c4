"""A sharded lodestore: N ordinary stores behind one root manifest, searched together, in-process or on Ray.

`ShardedStore` writes (documents routed to one shard by a stable hash of their id, one codec
trained once for all shards); `ShardedSearcher` fans a query out to every shard and merges the
top-k. Names load on first use (PEP 562): `import lodestore.sharded` loads neither the engine
nor Ray, and Ray is imported only by a ShardedSearcher given a ray_address (the
`lodestore[ray]` extra). Layout: docs/FORMAT.md section 15; modules: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it
_EXPORTS = {
    "ShardError": "._errors", "ShardTimeoutError": "._errors",
    "ROOT_MANIFEST": "._manifest", "is_sharded_root": "._manifest", "shard_of": "._manifest",
    "ShardedHits": "._searcher", "ShardedSearcher": "._searcher", "merge": "._searcher",
    "ShardedStore": "._store", "ShardedVerifyReport": "._store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lodestore.sharded' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
