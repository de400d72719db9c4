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

from engine import Encoder, EncoderConfig, Searcher, exhaustive_search

from .index import Hit, Index

__all__ = [
    "CorruptStoreError",
    "Encoder",
    "EncoderConfig",
    "Hit",
    "Index",
    "Searcher",
    "Store",
    "StoreError",
    "StoreLockedError",
    "UnsupportedFormatError",
    "VerifyReport",
    "__version__",
    "exhaustive_search",
]
