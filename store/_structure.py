"""Structural checks a reader makes beyond the CRCs (FORMAT.md section 11.1).

A CRC only says bytes are as written; a forged store can carry correct CRCs over
wrong numbers. These checks make every count agree with the manifest before the
numbers are used: a wrong one is CorruptStoreError, never a shifted deletion mask,
an empty id or an index out of range later.
"""

from __future__ import annotations

import numpy as np

from ._errors import CorruptStoreError


def check_csr(offsets: np.ndarray, n: int, end: int | None, where: object, what: str) -> np.ndarray:
    """An offsets array of n+1 entries: starts at 0, never decreases, ends at `end` (None: any)."""
    if n < 0 or offsets.ndim != 1 or len(offsets) != n + 1:
        raise CorruptStoreError(f"{where}: {what} has {len(offsets)} entries, expected {n + 1}")
    if offsets[0] != 0 or (n and bool((offsets[1:] < offsets[:-1]).any())):
        raise CorruptStoreError(f"{where}: {what} do not start at 0 and increase")
    if end is not None and int(offsets[-1]) != end:
        raise CorruptStoreError(f"{where}: {what} end at {int(offsets[-1])}, expected {end}")
    return offsets


def check_ivf(offsets: np.ndarray, deltas: np.ndarray, num_centroids: int, n_docs: int, where: object) -> None:
    """Inverted lists: K+1 offsets over the deltas; every list strictly ascending, every document < N."""
    check_csr(offsets, num_centroids, len(deltas), where, "ivf_offsets")
    if not len(deltas):
        return
    counts = np.diff(offsets)
    first = np.zeros(len(deltas), dtype=bool)
    first[(offsets[:-1])[counts > 0]] = True
    if bool((deltas[~first] == 0).any()):
        raise CorruptStoreError(f"{where}: an inverted list is not strictly ascending")
    csum = np.cumsum(deltas, dtype=np.int64)
    base = np.concatenate([[0], csum])[offsets[:-1]]
    last = csum[offsets[1:][counts > 0] - 1] - base[counts > 0]
    if len(last) and int(last.max()) >= n_docs:
        raise CorruptStoreError(f"{where}: an inverted list names a document beyond the segment's {n_docs}")


def check_codec(codec, *, num_centroids: int, dim: int, nbits: int, where: object) -> None:
    """The loaded codec has the manifest's K and dim (and, for the scalar codec, 2^nbits buckets)."""
    centroids = codec.centroids
    if centroids.shape != (num_centroids, dim):
        raise CorruptStoreError(f"{where}: centroids have shape {centroids.shape}, the manifest says "
                                f"({num_centroids}, {dim})")
    if not np.isfinite(centroids).all():
        raise CorruptStoreError(f"{where}: centroids are not finite")
    cutoffs = getattr(codec, "bucket_cutoffs", None)
    if cutoffs is not None:
        weights = codec.bucket_weights
        if cutoffs.shape != ((1 << nbits) - 1,) or weights.shape != (1 << nbits,):
            raise CorruptStoreError(f"{where}: bucket arrays have shapes {cutoffs.shape}, {weights.shape} for "
                                    f"nbits {nbits}")


def read_checked_codec(root, entry, *, nbits: int, dim: int):
    """The codec the manifest's entry names, loaded and checked against the entry (store/codecs reads it);
    the process's resident copy of it when another store already loaded the same codec (codecs/_shared.py)."""
    from ._safefs import StorePath
    from .codecs import read_codec
    from .codecs._shared import one_copy

    path = StorePath(root) / entry.path
    try:
        codec = read_codec(path, entry, nbits=nbits, dim=dim)
    except (ValueError, IndexError, TypeError, ZeroDivisionError) as e:  # arrays that do not fit each other
        raise CorruptStoreError(f"{path}: codec arrays do not fit together ({e})") from None
    check_codec(codec, num_centroids=entry.num_centroids, dim=dim, nbits=nbits, where=path)
    return one_copy(codec)  # stores of one codec (a sharded store's shards) share its resident copy
