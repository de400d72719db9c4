"""Deletion bitmaps: `<segment>.<generation>.del` files beside the segments.

A segment is never edited; deleting documents writes a new bitmap file that the
next manifest names (FORMAT.md section 10). Layout, little-endian:
  0  8  magic b"LDSDEL\\x00\\x01"
  8  8  n_docs (uint64)
  16 8  n_deleted (uint64)
  24 .. bitmap, ceil(n_docs/8) bytes; document d is deleted when bit (d % 8)
        (least significant first) of byte d // 8 is set
  -4 4  CRC32C of every byte before it
"""

from __future__ import annotations

import os
import struct

import google_crc32c
import numpy as np

from ._errors import CorruptStoreError
from ._safefs import StorePath

MAGIC = b"LDSDEL\x00\x01"
_HEADER = struct.Struct("<8sQQ")


def encode_deletes(deleted: np.ndarray) -> bytes:
    """Serialize a boolean (n_docs,) mask."""
    deleted = np.asarray(deleted, dtype=bool)
    body = _HEADER.pack(MAGIC, len(deleted), int(deleted.sum())) + np.packbits(deleted, bitorder="little").tobytes()
    return body + google_crc32c.value(body).to_bytes(4, "little")


def decode_deletes(data: bytes, n_docs: int, *, source: str) -> np.ndarray:
    """Parse and check a deletion file -> boolean (n_docs,) mask."""
    if len(data) < _HEADER.size + 4 or google_crc32c.value(data[:-4]).to_bytes(4, "little") != data[-4:]:
        raise CorruptStoreError(f"{source}: deletion bitmap checksum mismatch")
    magic, n, n_deleted = _HEADER.unpack_from(data)
    if magic != MAGIC or n != n_docs or len(data) != _HEADER.size + (n + 7) // 8 + 4:
        raise CorruptStoreError(f"{source}: malformed deletion bitmap (magic {magic!r}, {n} docs, expected {n_docs})")
    mask = np.unpackbits(np.frombuffer(data, np.uint8, count=(n + 7) // 8, offset=_HEADER.size), count=n, bitorder="little")
    mask = mask.astype(bool)
    if int(mask.sum()) != n_deleted:
        raise CorruptStoreError(f"{source}: deletion count disagrees with the bitmap")
    return mask


def read_deletes(root: str | os.PathLike, entry) -> np.ndarray:
    """The deletion mask a manifest segment entry names (all False when it names none).

    The file must be a regular file under segments/ (no symlink) of exactly the size
    the entry's document count gives, and its count of deletions must be the entry's.
    """
    if not entry.deletes:  # a read-only all-False view: no allocation sized by a manifest count alone
        return np.broadcast_to(np.False_, (entry.documents,))
    path = StorePath(root) / "segments" / entry.deletes
    try:
        data = path.read_bytes(_HEADER.size + (entry.documents + 7) // 8 + 4)
    except FileNotFoundError:
        raise CorruptStoreError(f"{path}: deletion bitmap named by the manifest is missing") from None
    except OSError as e:
        raise CorruptStoreError(f"{path}: unreadable deletion bitmap ({e})") from None
    mask = decode_deletes(data, entry.documents, source=str(path))
    if int(mask.sum()) != entry.deleted:
        raise CorruptStoreError(f"{path}: {int(mask.sum())} documents deleted, the manifest says {entry.deleted}")
    return mask
