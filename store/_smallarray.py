"""Direct reads of the small compressed Zarr v3 arrays (offsets, inverted lists, ids, codec state).

Their codec chain is `bytes(little)` [+ `gzip` | `blosc`] + `crc32c` (FORMAT.md
section 8). Reading them here, rather than through zarr-python, keeps zarr out of
a searching process: importing zarr costs ~20 MB of RSS. gzip decodes with the
standard zlib; numcodecs' blosc (~6 MB) is imported only for older stores.
"""

from __future__ import annotations

import itertools
import json
import zlib
from pathlib import Path

import google_crc32c
import numpy as np

from ._errors import CorruptStoreError


def read_meta(path: Path) -> tuple[tuple[int, ...], tuple[int, ...], np.dtype, str | None]:
    """(shape, chunk shape, dtype, compressor name or None) of the array at `path`, or CorruptStoreError."""
    meta_path = path / "zarr.json"
    try:
        meta = json.loads(meta_path.read_bytes())
    except FileNotFoundError:
        raise CorruptStoreError(f"{path}: array missing") from None
    except (OSError, ValueError) as e:
        raise CorruptStoreError(f"{meta_path}: unreadable array metadata ({e})") from None
    try:
        shape = tuple(int(s) for s in meta["shape"])
        chunks = tuple(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
        dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        names = [c["name"] for c in meta["codecs"]]
        endian = meta["codecs"][0].get("configuration", {}).get("endian", "little")
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CorruptStoreError(f"{meta_path}: not a lodestore array ({e!r})") from None
    chains = (["bytes", "crc32c"], ["bytes", "gzip", "crc32c"], ["bytes", "blosc", "crc32c"])
    if names not in chains or endian != "little" or len(shape) != len(chunks):
        raise CorruptStoreError(f"{meta_path}: unsupported codec chain {names} for a lodestore array")
    return shape, chunks, dtype, names[1] if len(names) == 3 else None


def _chunk_keys(shape: tuple[int, ...], chunks: tuple[int, ...]):
    return itertools.product(*[range(-(-s // c)) for s, c in zip(shape, chunks)])


def chunk_payload(path: Path, key: tuple[int, ...]) -> bytes:
    """A chunk file's bytes without its CRC32C trailer, after checking it."""
    f = path / "c" / "/".join(map(str, key))
    try:
        data = f.read_bytes()
    except FileNotFoundError:
        raise CorruptStoreError(f"{f}: chunk file missing") from None
    if len(data) < 4 or google_crc32c.value(data[:-4]).to_bytes(4, "little") != data[-4:]:
        raise CorruptStoreError(f"{f}: checksum mismatch in chunk {'/'.join(map(str, key))}")
    return data[:-4]


def read_small(path: Path) -> np.ndarray:
    """The whole array at `path`, every chunk CRC-checked (CorruptStoreError names the chunk file)."""
    path = Path(path)
    shape, chunks, dtype, compressor = read_meta(path)
    out = np.zeros(shape, dtype=dtype)
    for key in _chunk_keys(shape, chunks):
        payload = chunk_payload(path, key)
        if compressor:
            try:
                payload = _decompress(compressor, payload)
            except Exception as e:  # a chunk whose CRC matches but does not decompress
                raise CorruptStoreError(f"{path}/c/{'/'.join(map(str, key))}: {compressor} decode failed ({e})") from None
        n = int(np.prod(chunks, dtype=np.int64))
        if len(payload) != n * dtype.itemsize:
            raise CorruptStoreError(f"{path}/c/{'/'.join(map(str, key))}: chunk has {len(payload)} bytes, expected {n * dtype.itemsize}")
        block = np.frombuffer(payload, dtype=dtype).reshape(chunks)
        region = tuple(slice(k * c, min((k + 1) * c, s)) for k, c, s in zip(key, chunks, shape))
        out[region] = block[tuple(slice(0, r.stop - r.start) for r in region)]
    return out


def _decompress(compressor: str, payload: bytes) -> bytes:
    if compressor == "gzip":
        return zlib.decompress(payload, wbits=31)  # RFC 1952 framing
    from numcodecs import blosc  # stores written before gzip became the writer's choice

    return blosc.decompress(payload)


def read_attributes(path: Path) -> dict:
    """The `attributes` of the group or array at `path`."""
    try:
        return json.loads((Path(path) / "zarr.json").read_bytes()).get("attributes", {})
    except FileNotFoundError:
        raise CorruptStoreError(f"{path}: zarr.json missing") from None
    except (OSError, ValueError) as e:
        raise CorruptStoreError(f"{path}/zarr.json: {e}") from None


def verify_small(path: Path) -> tuple[int, list[str]]:
    """CRC-check every chunk file of a small array -> (chunks checked, failure messages)."""
    try:
        shape, chunks, _, _ = read_meta(Path(path))
    except CorruptStoreError as e:
        return 0, [str(e)]
    checked, failures = 0, []
    for key in _chunk_keys(shape, chunks):
        checked += 1
        try:
            chunk_payload(Path(path), key)
        except CorruptStoreError as e:
            failures.append(str(e))
    return checked, failures
