"""The one accepted shape of every array's zarr.json (FORMAT.md section 4.2), checked before any chunk is read.

zarr.json files carry no checksum, so a reader trusts nothing in them: each array
of the format has exactly one allowed dtype, rank, chunk grid and codec chain, and
`parse_array` refuses (CorruptStoreError naming the file) anything else, including
a compressor the format does not name, so no unexpected decoder ever sees a chunk.
Shapes are bounded by MAX_ELEMENTS and, where the manifest says what they must be,
compared with that before anything is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import CorruptStoreError

#: Largest count of rows/elements along one axis a reader accepts (FORMAT.md 4.2).
MAX_ELEMENTS = 1 << 40
#: Largest chunk of a small array, in elements (the writer's 2^20), and of a token-array inner chunk, in bytes.
MAX_SMALL_CHUNK = 1 << 20
MAX_INNER_CHUNK_BYTES = 1 << 20
MAX_SHARD_ROWS = 1 << 20

# chain kinds: "raw" = [bytes(little), crc32c] one chunk; "small" = [bytes(little), gzip|blosc, crc32c];
# "gzip" = [bytes(little), gzip, crc32c]; "sharded" = sharding_indexed{[bytes, crc32c], [bytes(little), crc32c], end}
_ARRAYS: dict[str, tuple[str, int, str]] = {
    # name: (zarr data_type, rank, chain)
    "codes": ("uint16", 1, "sharded"),
    "residuals": ("uint8", 2, "sharded"),
    "doc_offsets": ("int64", 1, "small"),
    "ivf_offsets": ("int64", 1, "small"),
    "ivf_docs": ("uint32", 1, "small"),
    "id_offsets": ("int64", 1, "small"),
    "id_bytes": ("uint8", 1, "small"),
    "payload_offsets": ("int64", 1, "small"),
    "payload_bytes": ("uint8", 1, "small"),
    "metadata": ("uint8", 1, "small"),
    "keyword_term_offsets": ("int64", 1, "small"),
    "keyword_term_bytes": ("uint8", 1, "small"),
    "keyword_doc_offsets": ("int64", 1, "small"),
    "keyword_terms": ("uint32", 1, "small"),
    "keyword_tfs": ("uint32", 1, "small"),
    "centroids": ("float16", 2, "raw"),
    "bucket_cutoffs": ("float32", 1, "raw"),
    "bucket_weights": ("float32", 1, "raw"),
    "pq_codebooks": ("float32", 3, "raw"),
    "matrix": ("float32", 1, "gzip"),
}


@dataclass(frozen=True)
class ArrayMeta:
    """What a reader takes from a checked zarr.json."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    compressor: str | None  # "gzip", "blosc" or None
    inner_rows: int = 0  # sharded arrays: rows per inner chunk


def _int(v: Any) -> int:
    if type(v) is not int:
        raise ValueError(f"{v!r} is not an integer")
    return v


def _ints(v: Any, n: int, what: str) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) != n:
        raise ValueError(f"{what} {v!r} is not a list of {n} integers")
    return tuple(_int(x) for x in v)


def _codec(c: Any, name: str) -> dict:
    if not isinstance(c, dict) or c.get("name") != name or set(c) - {"name", "configuration"}:
        raise ValueError(f"codec {c!r} is not {name!r}")
    cfg = c.get("configuration", {})
    if not isinstance(cfg, dict):
        raise ValueError(f"codec {name} configuration {cfg!r} is not an object")
    return cfg


def _bytes_codec(c: Any) -> None:
    if _codec(c, "bytes").get("endian", "little") != "little":
        raise ValueError("only little-endian arrays are read")


def _crc_codec(c: Any) -> None:
    if _codec(c, "crc32c"):
        raise ValueError("crc32c takes no configuration")


def parse_array(meta: Any, name: str, where: object, shape: tuple[int | None, ...] | None = None) -> ArrayMeta:
    """Check `meta` (a parsed zarr.json) against the format's spec of array `name` -> ArrayMeta.

    `shape`: the shape the manifest implies (None entries: not known yet); a
    mismatch is CorruptStoreError, so an edited shape never drives an allocation.
    """
    try:
        return _parse(meta, name, shape)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CorruptStoreError(f"{where}: not the zarr.json the format specifies for {name!r} ({e})") from None


def _parse(meta: Any, name: str, want: tuple[int | None, ...] | None) -> ArrayMeta:
    dtype_name, rank, chain = _ARRAYS[name]
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise ValueError("not a Zarr v3 array")
    if meta.get("data_type") != dtype_name:
        raise ValueError(f"data_type {meta.get('data_type')!r}, expected {dtype_name!r}")
    shape = _ints(meta["shape"], rank, "shape")
    if any(not 0 <= s <= MAX_ELEMENTS for s in shape):
        raise ValueError(f"shape {shape} out of range")
    if want is not None and any(w is not None and w != s for w, s in zip(want, shape)):
        raise ValueError(f"shape {list(shape)} disagrees with the manifest (expected {[w for w in want]})")
    grid = meta["chunk_grid"]
    if grid.get("name") != "regular" or set(grid) != {"name", "configuration"}:
        raise ValueError("chunk grid is not regular")
    chunks = _ints(grid["configuration"]["chunk_shape"], rank, "chunk_shape")
    if any(c < 1 for c in chunks):
        raise ValueError(f"chunk_shape {chunks} has an empty dimension")
    key = meta.get("chunk_key_encoding", {"name": "default"})
    if key.get("name") != "default" or key.get("configuration", {}).get("separator", "/") != "/":
        raise ValueError("chunk key encoding is not default with '/'")
    if meta.get("fill_value") not in (0, 0.0) or isinstance(meta.get("fill_value"), bool):
        raise ValueError(f"fill_value {meta.get('fill_value')!r} is not 0")
    if meta.get("storage_transformers", []) != []:
        raise ValueError("storage transformers are not part of the format")
    codecs = meta["codecs"]
    if not isinstance(codecs, list):
        raise ValueError("codecs is not a list")
    dtype = np.dtype(dtype_name).newbyteorder("<")
    if chain == "sharded":
        return _sharded(codecs, shape, chunks, dtype)
    if chain == "raw":
        if len(codecs) != 2 or chunks != tuple(max(s, 1) for s in shape):
            raise ValueError("codec arrays are [bytes, crc32c] in one chunk covering the array")
        _bytes_codec(codecs[0])
        _crc_codec(codecs[1])
        return ArrayMeta(shape, chunks, dtype, None)
    if len(codecs) != 3:
        raise ValueError(f"codec chain {[c.get('name') if isinstance(c, dict) else c for c in codecs]} is not "
                         "[bytes, gzip or blosc, crc32c]")
    _bytes_codec(codecs[0])
    _crc_codec(codecs[2])
    compressor = codecs[1].get("name") if isinstance(codecs[1], dict) else None
    if compressor == "gzip":
        level = _codec(codecs[1], "gzip").get("level", 5)
        if type(level) is not int or not 0 <= level <= 9:
            raise ValueError(f"gzip level {level!r}")
    elif compressor == "blosc" and chain == "small":
        _codec(codecs[1], "blosc")  # the frame itself is checked before decoding (store/_blosc.py)
    else:
        raise ValueError(f"compressor {compressor!r} is not one the format allows here")
    if chunks[0] > MAX_SMALL_CHUNK:
        raise ValueError(f"chunk of {chunks[0]} elements is larger than {MAX_SMALL_CHUNK}")
    return ArrayMeta(shape, chunks, dtype, compressor)


def _sharded(codecs: list, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype) -> ArrayMeta:
    if len(codecs) != 1:
        raise ValueError("a token array has exactly one codec, sharding_indexed")
    cfg = _codec(codecs[0], "sharding_indexed")
    if set(cfg) != {"chunk_shape", "codecs", "index_codecs", "index_location"} or cfg["index_location"] != "end":
        raise ValueError("sharding configuration is not {chunk_shape, codecs, index_codecs, index_location end}")
    inner = _ints(cfg["chunk_shape"], len(shape), "inner chunk_shape")
    for chain in (cfg["codecs"], cfg["index_codecs"]):
        if not isinstance(chain, list) or len(chain) != 2:
            raise ValueError("inner and index codecs are [bytes, crc32c]")
        _bytes_codec(chain[0])
        _crc_codec(chain[1])
    if chunks[1:] != shape[1:] or inner[1:] != shape[1:]:
        raise ValueError("shards and inner chunks span whole rows")
    shard_rows, inner_rows = chunks[0], inner[0]
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    if (inner_rows < 1 or shard_rows % inner_rows or shard_rows > MAX_SHARD_ROWS
            or inner_rows * max(row_bytes, 1) > MAX_INNER_CHUNK_BYTES):
        raise ValueError(f"shard of {shard_rows} rows and inner chunk of {inner_rows} rows are out of bounds")
    return ArrayMeta(shape, chunks, dtype, None, inner_rows)
