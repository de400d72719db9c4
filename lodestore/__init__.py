"""lodestore: a disk-offloaded late-interaction (multi-vector) retrieval store.

The public API re-exported from `store` (the on-disk format) and `engine` (queries).
"""

from store import (
    CorruptStoreError,
    Store,
    StoreError,
    StoreLockedError,
    UnsupportedFormatError,
    VerifyReport,
)

__version__ = "0.1.0"

__all__ = [
    "CorruptStoreError",
    "Store",
    "StoreError",
    "StoreLockedError",
    "UnsupportedFormatError",
    "VerifyReport",
    "__version__",
]

try:  # the engine is optional at import time only while it is being built
    from engine import Searcher, exhaustive_search  # noqa: F401

    __all__ += ["Searcher", "exhaustive_search"]
except ImportError:  # pragma: no cover
    pass
