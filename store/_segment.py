"""Immutable segments: one Zarr v3 group of token arrays, offsets, inverted lists and ids.

Layout (FORMAT.md section 8), for a segment of N documents and T tokens:
  codes        (T,)            uint16|uint32  sharded, raw bytes + crc32c per inner chunk
  residuals    (T, dim*nbits/8) uint8         sharded, raw bytes + crc32c per inner chunk
  doc_offsets  (N+1,)          int64          document d = rows doc_offsets[d]:doc_offsets[d+1]
  ivf_offsets  (K+1,)          int64          centroid c -> ivf_docs[ivf_offsets[c]:ivf_offsets[c+1]]
  ivf_docs     (E,)            uint32         local doc numbers, ascending within each list
  id_offsets   (N+1,)          int64          external id d = id_bytes[id_offsets[d]:id_offsets[d+1]]
  id_bytes     (B,)            uint8          UTF-8
  payload_offsets, payload_bytes  optional per-document bytes (store/_payloads.py)
  metadata     (M,)            uint8          optional typed metadata as UTF-8 JSON (store/_metadata.py)
  keyword_*                                   optional keyword postings (store/_keywords.py)
The small arrays are gzip + crc32c; doc_offsets is decoded at open, ids and
inverted lists each time they are asked for (a Searcher asks once).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from .codecs import Codec
from ._errors import CorruptStoreError
from ._keywords import KEYWORD_ARRAYS, KEYWORDS_ATTR, TOKENIZER_NAME, Keywords, read_keywords
from ._metadata import METADATA_ARRAY, MetadataColumns
from ._payloads import PAYLOAD_ARRAYS, PayloadReader, write_payloads
from ._rawarray import RawShardedArray
from ._safefs import StorePath, tree_bytes
from ._smallarray import _sp, read_attributes, read_small as _read_small, verify_small
from ._structure import check_csr, check_ivf

if TYPE_CHECKING:  # zarr is imported only to write: a searching process never loads it
    import zarr

SHARD_ROWS = 1 << 16
SMALL_CHUNK = 1 << 20
TOKEN_ARRAYS = ("codes", "residuals")
SMALL_ARRAYS = ("doc_offsets", "ivf_offsets", "ivf_docs", "id_offsets", "id_bytes")
SEGMENT_FORMAT = 1


PAGE = 4096
CRC_BYTES = 4


CHUNK_TARGET = 1024  # bytes of rows in an inner chunk that cannot fill a page exactly (docs/BENCHMARKS.md C18)


def inner_rows_for(row_bytes: int) -> int:
    """Rows per inner chunk. Where 16 or more whole rows fill a page with the chunk's CRC32C exactly (the codes'
    2-byte rows: 2,046 rows + 4 bytes = 4,096), the chunks lie on page boundaries, so reading one costs the
    device one page instead of the two a chunk straddling a boundary costs. Else the power of two that
    makes a chunk about CHUNK_TARGET bytes (at least 16 rows): a document's rows are read as the whole
    chunks that hold them, so small chunks read little beyond its rows (the device reads whole pages
    around them either way), for 16 bytes of shard index and 4 of a reader's offset table per chunk."""
    if row_bytes > 0 and (PAGE - CRC_BYTES) % row_bytes == 0 and (PAGE - CRC_BYTES) // row_bytes >= 16:
        return (PAGE - CRC_BYTES) // row_bytes
    rows = max(16, CHUNK_TARGET // max(row_bytes, 1))
    return 1 << (rows.bit_length() - 1)


def shard_rows_for(inner_rows: int) -> int:
    """Rows per shard: the most whole inner chunks within SHARD_ROWS (SHARD_ROWS itself for powers of two)."""
    return inner_rows * max(1, SHARD_ROWS // inner_rows)


def _token_array(group: "zarr.Group", name: str, shape: tuple[int, ...], dtype: np.dtype) -> "zarr.Array":
    from zarr.codecs import BytesCodec, Crc32cCodec

    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    inner = inner_rows_for(row_bytes)
    return group.create_array(
        name, shape=shape, dtype=dtype,
        shards=(shard_rows_for(inner),) + shape[1:], chunks=(inner,) + shape[1:],
        serializer=BytesCodec(endian="little"), compressors=[Crc32cCodec()], fill_value=0,
        config={"write_empty_chunks": True},
    )


def write_small_array(group: "zarr.Group", name: str, data: np.ndarray) -> None:
    from zarr.codecs import BytesCodec, Crc32cCodec, GzipCodec

    arr = group.create_array(
        name, shape=data.shape, dtype=data.dtype, chunks=(min(max(len(data), 1), SMALL_CHUNK),),
        serializer=BytesCodec(endian="little"),
        compressors=[GzipCodec(level=5), Crc32cCodec()],  # smaller than blosc-lz4 here, and zlib reads it
        fill_value=0, config={"write_empty_chunks": True},
    )
    if len(data):
        arr[:] = data


class _RowBuffer:
    """Accumulates rows and writes them shard-aligned, so zarr never rewrites a shard."""

    def __init__(self, array: "zarr.Array"):
        self.array = array
        self.shard_rows = int(array.shards[0])  # the array's own (codes and residuals may differ)
        self.parts: list[np.ndarray] = []
        self.buffered = 0
        self.written = 0

    def append(self, rows: np.ndarray) -> None:
        self.parts.append(rows)
        self.buffered += len(rows)
        if self.buffered >= self.shard_rows:
            self.flush(final=False)

    def flush(self, final: bool) -> None:
        if not self.parts:
            return
        data = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        n = len(data) if final else (len(data) // self.shard_rows) * self.shard_rows
        if n:
            self.array[self.written : self.written + n] = data[:n]
            self.written += n
        rest = data[n:]
        self.parts = [rest] if len(rest) else []
        self.buffered = len(rest)


class SegmentWriter:
    """Writes one new segment directory; nothing is visible until the manifest names it.

    Memory is bounded by one encode batch plus one shard of rows per token array, plus the
    (centroid, document) pairs of the inverted lists (8 bytes per distinct pair), plus the
    keyword postings when kept (16 bytes per (document, term) pair, and the terms).
    `keywords`: the name of the tokenizer whose postings every document brings, or None.
    """

    def __init__(self, path: StorePath, codec: Codec, n_docs: int, n_tokens: int, *, payloads: bool = False,
                 metadata: bool = False, keywords: str | None = None):
        if isinstance(path, StorePath):
            path.mkdir()  # a new, real directory (never through a symlink): zarr writes only inside it
            try:
                self._start(path, codec, n_docs, n_tokens, payloads, metadata, keywords)
            except BaseException:
                path.remove_tree()  # ours: made just now
                raise
        else:
            self._start(path, codec, n_docs, n_tokens, payloads, metadata, keywords)

    def _start(self, path, codec: Codec, n_docs: int, n_tokens: int, payloads: bool, metadata: bool,
               keywords: str | None) -> None:
        self.path = Path(path)
        self.codec = codec
        self.n_docs, self.n_tokens = n_docs, n_tokens
        import zarr

        self.group = zarr.open_group(str(self.path), mode="w-", zarr_format=3)
        attrs = {"lodestore_segment": SEGMENT_FORMAT, "documents": n_docs, "tokens": n_tokens}
        if payloads:
            attrs["payloads"] = True
        if metadata:
            attrs["metadata"] = True
        if keywords is not None:
            attrs[KEYWORDS_ATTR] = keywords
        self.group.attrs.update(attrs)
        self.payloads: list[bytes] | None = [] if payloads else None  # held until finish: bytes per doc, not tokens
        self.metadata: list[MetadataColumns] | None = [] if metadata else None  # columns, joined at finish
        self.tokenizer = keywords
        self.keywords: list[Keywords] | None = None if keywords is None else []  # postings, joined at finish
        self.codes = _RowBuffer(_token_array(self.group, "codes", (n_tokens,), codec.code_dtype))
        self.residuals = _RowBuffer(_token_array(self.group, "residuals", (n_tokens, codec.residual_bytes), np.dtype(np.uint8)))
        self.doclens: list[np.ndarray] = []
        self.ids: list[str] = []
        self.pairs: list[np.ndarray] = []
        self.docs_done = 0
        self.attrs: dict = {}  # informational group attributes added at finish (e.g. far_tokens, store/_drift.py)

    def append(self, ids: list[str], doclens: np.ndarray, codes: np.ndarray, residuals: np.ndarray,
               payloads: list[bytes] | None = None, metadata: MetadataColumns | None = None,
               keywords: Keywords | None = None) -> None:
        """Add encoded documents (their tokens concatenated in document order), their payloads, metadata
        and keyword postings."""
        if (payloads is None) != (self.payloads is None) or (payloads is not None and len(payloads) != len(ids)):
            raise ValueError("a segment's documents must all have a payload, or none")
        if (metadata is None) != (self.metadata is None) or (metadata is not None and metadata.n != len(ids)):
            raise ValueError("a segment's documents must all have metadata columns, or none")
        if (keywords is None) != (self.keywords is None) or keywords is not None and (
                keywords.n != len(ids) or keywords.tokenizer != self.tokenizer):
            raise ValueError(f"a segment's documents must all have keyword postings of tokenizer {self.tokenizer!r}, "
                             "or none")
        if keywords is not None:
            self.keywords.append(keywords)
        if metadata is not None:
            self.metadata.append(metadata)
        if payloads is not None:
            self.payloads.extend(payloads)
        doclens = np.asarray(doclens, dtype=np.int64)
        doc_of_token = np.repeat(np.arange(self.docs_done, self.docs_done + len(doclens), dtype=np.int64), doclens)
        self.pairs.append(np.unique(codes.astype(np.int64) * self.n_docs + doc_of_token))
        self.codes.append(codes)
        self.residuals.append(residuals)
        self.doclens.append(doclens)
        self.ids.extend(ids)
        self.docs_done += len(doclens)

    def finish(self) -> None:
        """Write the small arrays and flush the token arrays (the caller fsyncs the tree)."""
        if self.docs_done != self.n_docs or self.codes.written + self.codes.buffered != self.n_tokens:
            raise ValueError(f"segment got {self.docs_done} docs / {self.codes.written + self.codes.buffered} tokens, "
                             f"expected {self.n_docs} / {self.n_tokens}")
        self.codes.flush(final=True)
        self.residuals.flush(final=True)
        if self.attrs:
            self.group.attrs.update(self.attrs)
        doclens = np.concatenate(self.doclens)
        write_small_array(self.group, "doc_offsets", np.concatenate([[0], np.cumsum(doclens)]).astype(np.int64))
        pairs = np.unique(np.concatenate(self.pairs))  # sorted by centroid, then document
        self.pairs = []
        centroid, doc = np.divmod(pairs, self.n_docs)
        counts = np.bincount(centroid, minlength=self.codec.num_centroids)
        write_small_array(self.group, "ivf_offsets", np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        write_small_array(self.group, "ivf_docs", delta_encode_lists(doc, counts))
        encoded = [s.encode("utf-8") for s in self.ids]
        lens = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        write_small_array(self.group, "id_offsets", np.concatenate([[0], np.cumsum(lens)]).astype(np.int64))
        write_small_array(self.group, "id_bytes", np.frombuffer(b"".join(encoded), dtype=np.uint8))
        if self.payloads is not None:
            write_payloads(self.group, self.payloads)
            self.payloads = []
        if self.metadata is not None:
            blob = MetadataColumns.concat(self.metadata).encode()
            write_small_array(self.group, METADATA_ARRAY, np.frombuffer(blob, dtype=np.uint8))
            self.metadata = []
        if self.keywords is not None:
            for name, data in Keywords.concat(self.keywords).pruned().arrays().items():
                write_small_array(self.group, name, data)
            self.keywords = []


def delta_encode_lists(docs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Within each inverted list, keep the first doc number and then the gaps (compress well)."""
    out = docs.astype(np.int64)
    out[1:] -= docs[:-1].astype(np.int64)
    starts = np.cumsum(counts) - counts
    starts = starts[counts > 0]
    out[starts] = docs[starts]
    return out.astype(np.uint32)


def delta_decode_lists(deltas: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Inverse of delta_encode_lists, vectorized over all lists. In uint32 arithmetic, which wraps modulo
    2^32: every decoded value (a document number) is below 2^32, so the wrapped running sums give it
    exactly, in a third of the memory of int64 sums (a reader opens every segment's lists)."""
    csum = np.cumsum(deltas, dtype=np.uint32)
    starts = np.cumsum(counts) - counts
    base = np.concatenate([np.zeros(1, np.uint32), csum])[starts]  # sum of all deltas before each list
    csum -= np.repeat(base, counts)
    return csum


def read_small(path: StorePath, name: str, shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """Decode a whole compressed array of a segment (CRC-checked, without zarr-python)."""
    return _read_small(_sp(path) / name, shape)


@dataclass
class SegmentReader:
    """Read access to one committed segment. Token arrays are read on demand (pread + CRC).

    Open through `open` (or `open_entry` with the manifest's entry): it checks the
    structure, not only the CRCs, before anything is sized or indexed by it.
    """

    path: StorePath
    name: str
    doc_offsets: np.ndarray
    codes: RawShardedArray
    residuals: RawShardedArray
    has_payloads: bool = False
    _payloads: PayloadReader | None = None
    num_centroids: int | None = None  # K from the manifest: bounds the inverted lists and the codes
    has_metadata: bool = False
    metadata_schema: dict | None = None  # the manifest's settings.metadata_fields: what `metadata` may hold
    _metadata: MetadataColumns | None = None
    keyword_tokenizer: str | None = None  # the tokenizer whose postings the segment holds, or None

    @classmethod
    def open(cls, path: StorePath, *, documents: int | None = None, tokens: int | None = None,
             row_bytes: int | None = None, num_centroids: int | None = None) -> "SegmentReader":
        """Open the segment at `path`; the manifest's counts (when given) must agree with its arrays."""
        path = _sp(path)
        attrs = read_attributes(path)
        if type(attrs.get("lodestore_segment")) is not int or attrs["lodestore_segment"] != SEGMENT_FORMAT:
            raise CorruptStoreError(f"{path}: not a lodestore segment (format {attrs.get('lodestore_segment')!r})")
        if not isinstance(attrs.get("payloads", False), bool) or not isinstance(attrs.get("metadata", False), bool):
            raise CorruptStoreError(f"{path}: attribute payloads or metadata is not a boolean")
        tokenizer = attrs.get(KEYWORDS_ATTR)
        if tokenizer is not None and not (isinstance(tokenizer, str) and TOKENIZER_NAME.match(tokenizer)):
            raise CorruptStoreError(f"{path}: attribute {KEYWORDS_ATTR} is not a tokenizer name")
        offsets = read_small(path, "doc_offsets", (None if documents is None else documents + 1,))
        check_csr(offsets, len(offsets) - 1, tokens, path / "doc_offsets", "doc_offsets")
        n_tokens = int(offsets[-1])
        codes = RawShardedArray(path / "codes", (n_tokens,))
        try:
            residuals = RawShardedArray(path / "residuals", (n_tokens, row_bytes))
        except BaseException:
            codes.close()
            raise
        return cls(path, path.name, offsets, codes, residuals, has_payloads=attrs.get("payloads", False),
                   num_centroids=num_centroids, has_metadata=attrs.get("metadata", False), keyword_tokenizer=tokenizer)

    @classmethod
    def open_entry(cls, root: str | os.PathLike, entry, codec_entry, metadata_schema: dict | None = None
                   ) -> "SegmentReader":
        """Open the segment a manifest entry names, under `root`/segments/, checked against the entry.

        metadata_schema: the manifest's metadata fields {name: type}; a segment holding
        metadata under a manifest without them is corrupt (when its metadata is read).
        """
        row_bytes = num_centroids = None
        if codec_entry is not None:
            num_centroids = codec_entry.num_centroids
            row_bytes = codec_entry.pq_subspaces or codec_entry.dim * codec_entry.nbits // 8
        seg = cls.open(StorePath(root) / "segments" / entry.name, documents=entry.documents, tokens=entry.tokens,
                       row_bytes=row_bytes, num_centroids=num_centroids)
        seg.metadata_schema = metadata_schema
        return seg

    @property
    def n_docs(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.doc_offsets[-1])

    def ids(self) -> list[str]:
        """External ids, in local document order."""
        offsets, blob = self.id_table()
        blob = blob.tobytes()
        try:
            return [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
        except UnicodeDecodeError as e:
            raise CorruptStoreError(f"{self.path}/id_bytes: an id is not UTF-8 ({e})") from None

    def id_table(self) -> tuple[np.ndarray, np.ndarray]:
        """The raw id table: (id_offsets (N+1,) int64, id_bytes (B,) uint8 UTF-8), checked to fit each other."""
        offsets = read_small(self.path, "id_offsets", (self.n_docs + 1,))
        check_csr(offsets, self.n_docs, None, self.path / "id_offsets", "id_offsets")
        return offsets, read_small(self.path, "id_bytes", (int(offsets[-1]),))

    def payloads(self, docs: np.ndarray) -> list[bytes] | None:
        """Payload bytes of local documents `docs` (None when the segment stores none)."""
        if not self.has_payloads:
            return None
        if self._payloads is None:
            self._payloads = PayloadReader(self.path, self.n_docs)
        return self._payloads.get(docs)

    def metadata(self) -> MetadataColumns:
        """The typed metadata columns of every document (no fields when the segment has none); read once, checked."""
        if self._metadata is None:
            if not self.has_metadata:
                self._metadata = MetadataColumns(self.n_docs)
            else:
                if self.metadata_schema is None:
                    raise CorruptStoreError(f"{self.path}: holds metadata, but the manifest lists no metadata fields")
                blob = read_small(self.path, METADATA_ARRAY)
                self._metadata = MetadataColumns.decode(blob.tobytes(), self.n_docs, self.metadata_schema,
                                                        self.path / METADATA_ARRAY)
        return self._metadata

    def keywords(self) -> Keywords:
        """The segment's keyword postings, read and checked (not kept: the caller holds what it needs)."""
        if self.keyword_tokenizer is None:
            raise ValueError(f"{self.path}: the segment holds no keyword postings")
        return read_keywords(self.path, self.n_docs, self.keyword_tokenizer)

    def ivf_size(self) -> int:
        """How many (centroid, document) pairs the inverted lists hold (reads ivf_offsets only; checked, and
        at most the segment's tokens, so a hostile store cannot make a reader allocate for more)."""
        k = self.num_centroids
        offsets = read_small(self.path, "ivf_offsets", (None if k is None else k + 1,))
        check_csr(offsets, len(offsets) - 1, None, self.path / "ivf_offsets", "ivf_offsets")
        pairs = int(offsets[-1]) if len(offsets) else 0
        if pairs > self.n_tokens:
            raise CorruptStoreError(f"{self.path / 'ivf_offsets'}: {pairs:,} (centroid, document) pairs in a "
                                    f"segment of {self.n_tokens:,} tokens")
        return pairs

    def ivf(self) -> tuple[np.ndarray, np.ndarray]:
        """Inverted lists: (ivf_offsets (K+1,) int64, ivf_docs (E,) uint32 absolute doc numbers)."""
        k = self.num_centroids
        offsets = read_small(self.path, "ivf_offsets", (None if k is None else k + 1,))
        deltas = read_small(self.path, "ivf_docs", (int(offsets[-1]) if len(offsets) else None,))
        check_ivf(offsets, deltas, len(offsets) - 1, self.n_docs, self.path / "ivf_offsets")
        return offsets, delta_decode_lists(deltas, np.diff(offsets))

    def read_docs(self, docs: np.ndarray, *, codes: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, dict]:
        """Token rows of local documents `docs` -> (codes, residuals, doclens, io counters).

        codes=False skips the codes array (for a reader that keeps codes in RAM) and returns None for it.
        io: bytes read (whole inner chunks with their CRCs), read calls, and the bytes of the rows asked for.
        """
        docs = np.asarray(docs, dtype=np.int64)
        starts, stops = self.doc_offsets[docs], self.doc_offsets[docs + 1]
        residuals, io = self.residuals.read_ranges(starts, stops)
        code_rows = None
        if codes:
            code_rows, io1 = self.codes.read_ranges(starts, stops)
            io = {key: io.get(key, 0) + io1.get(key, 0) for key in io.keys() | io1.keys()}
        io["rows"] = residuals.nbytes + (code_rows.nbytes if code_rows is not None else 0)  # what was asked for
        return code_rows, residuals, stops - starts, io

    def advise_docs(self, docs: np.ndarray, *, codes: bool = True) -> int:
        """Ask the kernel to start reading local documents' token rows into the page cache now (see
        RawShardedArray.advise); codes=False for a reader that keeps codes in RAM. Returns the hints given."""
        docs = np.asarray(docs, dtype=np.int64)
        docs = docs[(docs >= 0) & (docs < self.n_docs)]
        starts, stops = self.doc_offsets[docs], self.doc_offsets[docs + 1]
        n = self.residuals.advise(starts, stops)
        return n + (self.codes.advise(starts, stops) if codes else 0)

    def verify(self) -> tuple[int, list[str]]:
        """Check every chunk of every array and the segment's structure -> (chunks checked, failures)."""
        checked, failures = 0, []
        for arr in (self.codes, self.residuals):
            c, f = arr.verify()
            checked += c
            failures += f
        names, checks = list(SMALL_ARRAYS), [self.ids, self.ivf, self._check_codes]
        for present, arrays, check in ((self.has_payloads, PAYLOAD_ARRAYS, self._check_payloads),
                                       (self.has_metadata, (METADATA_ARRAY,), self.metadata),
                                       (self.keyword_tokenizer is not None, KEYWORD_ARRAYS, self.keywords)):
            if present:
                names += arrays
                checks.append(check)
        for name in names:
            c, f = verify_small(self.path / name)
            checked += c
            failures += f
        if not failures:
            for check in checks:
                try:
                    check()
                except CorruptStoreError as e:
                    failures.append(str(e))
        return checked, failures

    def _check_codes(self) -> None:
        """Every code names a centroid (< K), one shard at a time."""
        if self.num_centroids is None:
            return
        for lo in range(0, self.n_tokens, SHARD_ROWS):
            rows, _ = self.codes.read_ranges(np.array([lo]), np.array([min(lo + SHARD_ROWS, self.n_tokens)]))
            if len(rows) and int(rows.max()) >= self.num_centroids:
                raise CorruptStoreError(f"{self.codes.path}: code {int(rows.max())} in rows {lo}.. is not below K "
                                        f"= {self.num_centroids}")

    def _check_payloads(self) -> None:
        self.payloads(np.arange(0))

    def close(self) -> None:
        self.codes.close()
        self.residuals.close()


def segment_disk_usage(root: Path, segment: str) -> dict[str, int]:
    """Bytes on disk per array of segment `segment` of the store at `root` (never through a symlink)."""
    return {name: tree_bytes(root, f"segments/{segment}/{name}")
            for name in TOKEN_ARRAYS + SMALL_ARRAYS + PAYLOAD_ARRAYS + (METADATA_ARRAY,) + KEYWORD_ARRAYS}
