"""Per-document payloads: opaque bytes stored beside the token rows (text, title, metadata).

Two optional segment arrays (FORMAT.md section 8.5):
  payload_offsets (N+1,) int64  gzip + crc32c, decoded whole once per reader
  payload_bytes   (P,)   uint8  gzip + crc32c in chunks of PAYLOAD_CHUNK bytes
A lookup reads and checks only the chunks that hold the asked documents, so
showing ten hits reads a few tens of KB, not the whole text of the segment.
The store never interprets the bytes; the Index facade keeps UTF-8 JSON there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ._safefs import StorePath
from ._smallarray import _sp, decode_chunk, read_array_meta, read_small
from ._structure import check_csr

if TYPE_CHECKING:
    import zarr

    from ._segment import SegmentReader

PAYLOAD_CHUNK = 1 << 13  # bytes per chunk: a hit costs one or two chunk reads (the size chosen in docs/BENCHMARKS.md 7.4)
PAYLOAD_ARRAYS = ("payload_offsets", "payload_bytes")


def check_payloads(payloads: Sequence[object] | None, n_docs: int) -> list[bytes] | None:
    """Payloads must be bytes, one per document (None: the segment has none)."""
    if payloads is None:
        return None
    if isinstance(payloads, (bytes, str)):
        raise ValueError("payloads must be a list with one bytes object per document")
    out = list(payloads)
    if len(out) != n_docs:
        raise ValueError(f"got {len(out)} payloads for {n_docs} documents")
    for i, p in enumerate(out):
        if not isinstance(p, (bytes, bytearray, memoryview)):
            raise ValueError(f"payload {i} is {type(p).__name__}, not bytes")
    return [bytes(p) for p in out]


def write_payloads(group: "zarr.Group", payloads: list[bytes]) -> None:
    """Write the two payload arrays into a segment group being built."""
    from zarr.codecs import BytesCodec, Crc32cCodec, GzipCodec

    lens = np.fromiter((len(p) for p in payloads), dtype=np.int64, count=len(payloads))
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    blob = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    for name, data, chunk in (("payload_offsets", offsets, min(len(offsets), 1 << 20)),
                              ("payload_bytes", blob, PAYLOAD_CHUNK)):
        arr = group.create_array(
            name, shape=data.shape, dtype=data.dtype, chunks=(max(chunk, 1),),
            serializer=BytesCodec(endian="little"), compressors=[GzipCodec(level=5), Crc32cCodec()],
            fill_value=0, config={"write_empty_chunks": True},
        )
        if len(data):
            arr[:] = data


class PayloadReader:
    """Random access to the payloads of one segment; chunks are read and checked on demand."""

    def __init__(self, segment_path: StorePath, n_docs: int):
        segment_path = _sp(segment_path)
        self.path = segment_path / "payload_bytes"
        self.offsets = read_small(segment_path / "payload_offsets", (n_docs + 1,))
        self._meta = read_array_meta(self.path)
        self._size, self._chunk = self._meta.shape[0], self._meta.chunks[0]
        check_csr(self.offsets, n_docs, self._size, segment_path / "payload_offsets", "payload offsets")

    def get(self, docs: Sequence[int]) -> list[bytes]:
        """Payload bytes of local documents `docs`, in that order."""
        docs = np.asarray(docs, dtype=np.int64)
        starts, stops = self.offsets[docs], self.offsets[docs + 1]
        needed = sorted({c for a, b in zip(starts.tolist(), stops.tolist()) for c in range(a // self._chunk, -(-b // self._chunk))})
        chunks = {c: self._read_chunk(c) for c in needed}
        out = []
        for a, b in zip(starts.tolist(), stops.tolist()):
            parts = [chunks[c][max(a - c * self._chunk, 0): b - c * self._chunk] for c in range(a // self._chunk, -(-b // self._chunk))]
            out.append(b"".join(parts))
        return out

    def _read_chunk(self, c: int) -> bytes:
        return decode_chunk(self.path, (c,), self._meta)


def gather_payloads(segments: Sequence["SegmentReader"], where: Sequence[tuple[int, int]]) -> list[bytes | None]:
    """The payload of each (segment number, local document) in `where`, in order (None for a document
    added without one): one read per segment for all of its documents."""
    out: list[bytes | None] = [None] * len(where)
    by_segment: dict[int, list[int]] = {}
    for pos, (si, _) in enumerate(where):
        by_segment.setdefault(si, []).append(pos)
    for si, positions in by_segment.items():
        got = segments[si].payloads(np.array([where[p][1] for p in positions]))
        for p, data in zip(positions, got or [None] * len(positions)):
            out[p] = data
    return out
