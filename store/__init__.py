"""lodestore's on-disk format: codec, segments, manifest, and the Store that ties them together.

This package never imports `engine`: it knows nothing about queries.
"""

from ._errors import CorruptStoreError, StoreError, StoreLockedError, UnsupportedFormatError
from ._ingest import BundleSource, DocSource, as_numpy, normalize_rows, open_source
from ._manifest import FORMAT_VERSION, OLDEST_READABLE_VERSION, Manifest, SegmentEntry
from ._keywords import Keywords
from ._pooling import check_pool_factor
from ._metadata import MetadataColumns
from ._metadata_where import Where, compile_where
from ._report import VerifyReport
from ._segment import SegmentReader
from ._store import Store
from .codecs import Codec, PQCodec, ResidualCodec, ScalarCodec, default_num_centroids, pack_bits, unpack_bits

__all__ = [
    "BundleSource",
    "Codec",
    "CorruptStoreError",
    "DocSource",
    "FORMAT_VERSION",
    "Keywords",
    "Manifest",
    "MetadataColumns",
    "OLDEST_READABLE_VERSION",
    "PQCodec",
    "ResidualCodec",
    "ScalarCodec",
    "SegmentEntry",
    "SegmentReader",
    "Store",
    "StoreError",
    "StoreLockedError",
    "UnsupportedFormatError",
    "VerifyReport",
    "Where",
    "as_numpy",
    "check_pool_factor",
    "compile_where",
    "default_num_centroids",
    "normalize_rows",
    "open_source",
    "pack_bits",
    "unpack_bits",
]
