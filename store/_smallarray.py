"""Direct reads of the small compressed Zarr v3 arrays (offsets, inverted lists, ids, codec state).

Their codec chain is `bytes(little)` [+ `gzip` | `blosc`] + `crc32c` (FORMAT.md
section 8). Reading them here, rather than through zarr-python, keeps zarr out of
a searching process: importing zarr costs RSS (docs/BENCHMARKS.md 4). gzip decodes with the
standard zlib, with an output bound; blosc frames of older stores are walked and
checked by store/_blosc.py before any decoder sees them.

Every zarr.json is checked against the format's one allowed form of that array
(store/_zarrmeta.py) and every file is opened through store/_safefs.py (no symlink
followed, regular files only, sizes bounded), so a hostile store can make these
reads fail only with CorruptStoreError or UnsupportedFormatError.
"""

from __future__ import annotations

import itertools
import os
import zlib

import google_crc32c
import numpy as np

from ._blosc import decode_blosc
from ._errors import CorruptStoreError
from ._safefs import MAX_JSON_BYTES, StorePath
from ._zarrmeta import ArrayMeta, parse_array

# Largest compressed chunk file: a chunk of at most 2^20 elements of 8 bytes, plus
# room for a compressor that makes it larger (FORMAT.md 4.2).
_MAX_CHUNK_FILE = (8 << 20) + (1 << 16) + 4


def _sp(path: StorePath | os.PathLike | str) -> StorePath:
    """A StorePath as given; a plain path is anchored at its own parent (tests and tools only)."""
    if isinstance(path, StorePath):
        return path
    path = os.fspath(path)
    head, tail = os.path.split(os.path.normpath(path))
    return StorePath(head or ".", (tail,))


def read_array_meta(path: StorePath, shape: tuple[int | None, ...] | None = None) -> ArrayMeta:
    """The checked metadata of the array at `path` (its name says which array of the format it is)."""
    path = _sp(path)
    meta_path = path / "zarr.json"
    try:
        meta = meta_path.read_json()
    except FileNotFoundError:
        raise CorruptStoreError(f"{path}: array missing") from None
    except OSError as e:
        raise CorruptStoreError(f"{meta_path}: unreadable array metadata ({e})") from None
    return parse_array(meta, path.name, meta_path, shape)


def _chunk_keys(shape: tuple[int, ...], chunks: tuple[int, ...]):
    return itertools.product(*[range(-(-s // c)) for s, c in zip(shape, chunks)])


def chunk_payload(path: StorePath, key: tuple[int, ...], max_size: int = _MAX_CHUNK_FILE) -> bytes:
    """A chunk file's bytes without its CRC32C trailer, after checking it."""
    path = _sp(path)
    f = path / "c" / "/".join(map(str, key))
    try:
        data = f.read_bytes(max_size)
    except FileNotFoundError:
        raise CorruptStoreError(f"{f}: chunk file missing") from None
    except OSError as e:
        raise CorruptStoreError(f"{f}: unreadable chunk ({e})") from None
    if len(data) < 4 or google_crc32c.value(data[:-4]).to_bytes(4, "little") != data[-4:]:
        raise CorruptStoreError(f"{f}: checksum mismatch in chunk {'/'.join(map(str, key))}")
    return data[:-4]


def decode_chunk(path: StorePath, key: tuple[int, ...], meta: ArrayMeta) -> bytes:
    """One chunk's decoded bytes: CRC checked, decompressed to exactly the chunk's size (never more)."""
    expected = int(np.prod(meta.chunks, dtype=np.int64)) * meta.dtype.itemsize
    where = f"{path}/c/{'/'.join(map(str, key))}"
    payload = chunk_payload(path, key, expected + 4 if meta.compressor is None else _MAX_CHUNK_FILE)
    if meta.compressor == "gzip":
        payload = _gunzip(payload, expected, where)
    elif meta.compressor == "blosc":
        payload = decode_blosc(payload, expected, where)
    if len(payload) != expected:
        raise CorruptStoreError(f"{where}: chunk has {len(payload)} bytes, expected {expected}")
    return payload


def _gunzip(data: bytes, expected: int, where: str) -> bytes:
    """One RFC 1952 gzip member that must inflate to exactly `expected` bytes; inflating stops at expected + 1."""
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data, expected + 1)
    except zlib.error as e:
        raise CorruptStoreError(f"{where}: gzip decode failed ({e})") from None
    if len(out) != expected or not d.eof or d.unused_data or d.unconsumed_tail:
        raise CorruptStoreError(f"{where}: gzip chunk does not decode to exactly {expected} bytes")
    return out


def read_small(path: StorePath, shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """The whole array at `path`, every chunk CRC-checked (CorruptStoreError names the chunk file).

    Chunks are decoded one at a time and only then put together, so memory grows
    with the bytes actually on disk, never with a shape read from metadata alone.
    """
    path = _sp(path)
    meta = read_array_meta(path, shape)
    blocks = []
    for key in _chunk_keys(meta.shape, meta.chunks):
        block = np.frombuffer(decode_chunk(path, key, meta), dtype=meta.dtype).reshape(meta.chunks)
        region = tuple(slice(0, min(c, s - k * c)) for k, c, s in zip(key, meta.chunks, meta.shape))
        blocks.append(block[region])
    if not blocks:
        return np.zeros(meta.shape, dtype=meta.dtype)
    if len(meta.shape) == 1:
        return np.concatenate(blocks) if len(blocks) > 1 else blocks[0].copy()
    if len(blocks) != 1:  # multi-dimensional arrays of the format are single-chunk (codec arrays)
        raise CorruptStoreError(f"{path}: a multi-dimensional array must be one chunk")
    return blocks[0].copy()


def read_attributes(path: StorePath) -> dict:
    """The `attributes` of the group or array at `path` (a JSON object, else CorruptStoreError)."""
    path = _sp(path)
    try:
        meta = (path / "zarr.json").read_json(MAX_JSON_BYTES)
    except FileNotFoundError:
        raise CorruptStoreError(f"{path}: zarr.json missing") from None
    except OSError as e:
        raise CorruptStoreError(f"{path}/zarr.json: {e}") from None
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) else None
    if not isinstance(attrs, dict):
        raise CorruptStoreError(f"{path}/zarr.json: not a Zarr v3 node with an attributes object")
    return attrs


def verify_small(path: StorePath, shape: tuple[int | None, ...] | None = None) -> tuple[int, list[str]]:
    """Check (CRC and decode) every chunk of a small array -> (chunks checked, failure messages).

    Stops at the first missing chunk file: a shape naming millions of chunks is one failure, not millions.
    """
    path = _sp(path)
    try:
        meta = read_array_meta(path, shape)
    except CorruptStoreError as e:
        return 0, [str(e)]
    checked, failures = 0, []
    for key in _chunk_keys(meta.shape, meta.chunks):
        checked += 1
        try:
            decode_chunk(path, key, meta)
        except CorruptStoreError as e:
            failures.append(str(e))
            if "chunk file missing" in str(e):
                break
        except Exception as e:  # UnsupportedFormatError (a blosc variant this reader refuses)
            failures.append(str(e))
            break
    return checked, failures
