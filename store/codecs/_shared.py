"""One resident copy of a codec per process, whichever stores hold it.

The shards of a sharded store adopt one codec state (byte-identical codec/ files), and a process
that opens several of them (ShardedSearcher's in-process mode, a server over several stores) would
otherwise hold one copy of the centroids and tables per store. Codecs are immutable once trained,
so a codec read from disk is exchanged for the one already loaded with the same content, found by
a digest of its fields; the table holds codecs weakly, so a codec no store uses any more is freed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import weakref
from typing import Any

import numpy as np

_LOADED: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def content_key(codec: Any) -> str:
    """A digest of the codec's class and constructor fields (arrays by dtype, shape and bytes)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(type(codec).__qualname__.encode())
    for f in dataclasses.fields(codec):
        if not f.init:
            continue  # derived from the others in __post_init__
        value = getattr(codec, f.name)
        h.update(f.name.encode())
        if isinstance(value, np.ndarray):
            h.update(f"{value.dtype.str}{value.shape}".encode())
            h.update(np.ascontiguousarray(value).data)
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def one_copy(codec: Any) -> Any:
    """The loaded codec with this one's content if the process has one, else this one (remembered, its
    arrays made read-only: a shared copy written in place would change every store holding it)."""
    key = content_key(codec)
    with _LOCK:
        known = _LOADED.get(key)
        if known is not None:
            return known
        for f in dataclasses.fields(codec):
            value = getattr(codec, f.name)
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
        _LOADED[key] = codec
        return codec
