"""lodestore: a disk-offloaded late-interaction (multi-vector) retrieval store.

One top-level package. ``lodestore.store`` is the on-disk format (it never imports
``lodestore.engine``), ``lodestore.engine`` answers queries, ``lodestore.text`` turns
texts into vectors, and this module re-exports their public API, lazily: ``import
lodestore.store`` loads neither the engine nor onnxruntime, and ``import lodestore``
costs nothing until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first use, PEP 562).
_EXPORTS = {
    "CorruptStoreError": "lodestore.store",
    "Store": "lodestore.store",
    "StoreError": "lodestore.store",
    "StoreLockedError": "lodestore.store",
    "UnsupportedFormatError": "lodestore.store",
    "VerifyReport": "lodestore.store",
    "Encoder": "lodestore.text",
    "EncoderConfig": "lodestore.text",
    "Searcher": "lodestore.engine",
    "exhaustive_search": "lodestore.engine",
    "Hit": "lodestore.index",
    "Index": "lodestore.index",
    "Client": "lodestore.client",
    "ShardedStore": "lodestore.sharded",
    "ShardedSearcher": "lodestore.sharded",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from lodestore.engine import Searcher, exhaustive_search
    from lodestore.index import Hit, Index
    from lodestore.sharded import ShardedSearcher, ShardedStore
    from lodestore.store import (
        CorruptStoreError,
        Store,
        StoreError,
        StoreLockedError,
        UnsupportedFormatError,
        VerifyReport,
    )
    from lodestore.text import Encoder, EncoderConfig


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lodestore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
