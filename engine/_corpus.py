"""The resident part of a store as the engine sees it: global doc numbering over segments.

Global document g lives in segment s = searchsorted(seg_base, g, 'right') - 1 at
local number g - seg_base[s]. Everything here is built once at open from
`store`'s public reader API: the merged inverted lists by engine/_pairs.py, in RAM or
(a memory budget below the index) in a memory-mapped file (engine/_paged.py).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from lodestore.store import Store

from ._maxsim import int8_centroids, ramp
from ._paged import PagedArrays, ResidentArrays
from . import _pairs
from ._pairs import merge_pairs, offsets_dtype, pairs_bytes

# The int8 query-centroid tables of each codec object in use: Corpora over one codec (a Searcher's
# generations, the shards of a sharded store searched in one process: store/codecs/_shared.py gives
# them one codec object) share them instead of computing and holding a copy each.
_INT8: dict[int, tuple] = {}  # id(codec) -> its tables, dropped when the codec is freed (codecs are not hashable)
_INT8_LOCK = threading.Lock()


def _int8_tables(codec) -> tuple:
    """int8_centroids(codec.centroids), computed once per codec object while it lives."""
    key = id(codec)
    with _INT8_LOCK:
        tables = _INT8.get(key)
        if tables is None:
            tables = _INT8[key] = int8_centroids(codec.centroids)
            weakref.finalize(codec, _INT8.pop, key, None)
        return tables


class Corpus:
    """Centroids, merged inverted lists, deletion mask, compact id table; optionally codes/residuals."""

    def __init__(self, store: Store):
        """Open `store`'s segments and read what every placement keeps in RAM; the inverted lists and
        each document's centroid ids come with build_index, once the budget has said where they go."""
        self.store = store
        self.codec = store.codec
        self.lease = store.lease()  # this generation's files stay on disk until close(), whatever writers do
        self.arrays: ResidentArrays | PagedArrays = ResidentArrays()
        try:
            self.segments = store.open_segments()  # our own readers: a commit on `store` closes its own
        except BaseException:
            self.lease.release()
            raise
        self.centroids = self.codec.centroids  # (K, d) float32: decoding for exact MaxSim
        # int8 copies for the query-centroid product (rows, byte sums, scales): a quarter of the float32 bytes
        self.centroids_i8 = _int8_tables(self.codec)
        sizes = [s.n_docs for s in self.segments]
        self.seg_base = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_docs = int(self.seg_base[-1])
        self.deleted = np.concatenate([store.deleted(i) for i in range(len(self.segments))])
        self.n_pairs = sum(seg.ivf_size() for seg in self.segments)
        self.ivf_block = _pairs.IVF_BLOCK  # documents a block of the centroid-major lists
        self._build_ids()
        self.ivf_docs = self.ivf_offsets = self.doc_codes = self.doc_code_offsets = np.zeros(0, np.uint32)
        self.codes: np.ndarray | None = None
        self.residuals: np.ndarray | None = None
        self.token_offsets: np.ndarray | None = None

    def pageable_bytes(self) -> int:
        """Bytes of what build_index(paged=True) keeps in a memory-mapped file: the merged inverted
        lists, each document's distinct centroid ids, their offsets and the document id table."""
        return pairs_bytes(self.n_pairs, self.n_docs, self.codec.num_centroids, self.codec.code_dtype,
                           self.ivf_block) \
            + self.id_offsets.nbytes + self.id_bytes.nbytes

    def planned_index_bytes(self) -> int:
        """Bytes of the whole index once build_index has built it in RAM."""
        parts = self.index_parts()
        rest = sum(v for name, v in parts.items() if name not in ("ivf_docs", "ivf_offsets", "doc_codes",
                                                                    "doc_code_offsets"))
        return rest + pairs_bytes(self.n_pairs, self.n_docs, self.codec.num_centroids, self.codec.code_dtype,
                                  self.ivf_block)

    def build_index(self, paged: bool = False, directory: str | None = None) -> None:
        """Merge the segments' inverted lists (engine/_pairs.py) into RAM, or with paged=True into an
        unlinked file under `directory` (default: the system's temporary directory) that queries
        read through the page cache (engine/_paged.py), with the id table beside them."""
        if paged:
            self.arrays = PagedArrays(directory)
        pairs = merge_pairs(self.segments, self.seg_base, self.codec.num_centroids, self.codec.code_dtype,
                            self.n_pairs, self.arrays, self.ivf_block)
        self.ivf_docs, self.ivf_offsets = pairs.ivf_docs, pairs.ivf_offsets
        self.doc_codes, self.doc_code_offsets = pairs.doc_codes, pairs.doc_code_offsets
        self.id_offsets, self.id_bytes = self.arrays.keep(self.id_offsets), self.arrays.keep(self.id_bytes)
        self.arrays.seal()

    def probed_docs(self, cents: np.ndarray, with_centroids: bool = False):
        """The documents of the given centroids' inverted lists (with repeats), int64, grouped by
        block (ascending within each list); with_centroids: also the centroid each pair came from."""
        k = self.codec.num_centroids
        lists, starts, lens = self._lists(cents)
        local = np.take(self.ivf_docs, np.repeat(starts, lens) + ramp(lens))
        docs = np.repeat(lists // k * self.ivf_block, lens) + local
        return (docs, np.repeat(lists % k, lens)) if with_centroids else docs

    def probed_pairs_by_doc(self, cents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (document, centroid) pairs of the given centroids' inverted lists, sorted by document
        (int64), then by centroid (the codec's code dtype): each candidate's probed centroids together.
        The lists come block by block, so each block's pairs are sorted on their uint16 offsets (a
        radix sort; with 16-bit centroid ids, offset and centroid packed in one uint32 and sorted, which
        gives the same order) instead of the whole by int64 document numbers."""
        k = self.codec.num_centroids
        lists, starts, lens = self._lists(cents)
        n_blocks = (len(self.ivf_offsets) - 1) // k
        bounds = np.concatenate([[0], np.cumsum(lens.reshape(n_blocks, -1).sum(axis=1))]).tolist()
        if self.ivf_docs.dtype == np.uint16 and np.dtype(self.codec.code_dtype) == np.uint16:
            # both 16-bit: each pair as one uint32 (offset, centroid), sorted in place: the same order, no gathers
            key = np.take(self.ivf_docs, np.repeat(starts, lens) + ramp(lens)).astype(np.uint32) << np.uint32(16)
            key |= np.repeat((lists % k).astype(np.uint32), lens)
            docs = np.empty(len(key), dtype=np.int64)
            for b, (a, e) in enumerate(zip(bounds[:-1], bounds[1:])):
                if a < e:
                    key[a:e].sort()
                    np.add(key[a:e] >> np.uint32(16), b * self.ivf_block, out=docs[a:e], dtype=np.int64,
                           casting="unsafe")
            return docs, key.astype(np.uint16)  # the low 16 bits: the centroids
        local = np.take(self.ivf_docs, np.repeat(starts, lens) + ramp(lens))
        owner = np.repeat((lists % k).astype(self.codec.code_dtype), lens)
        docs = np.empty(len(local), dtype=np.int64)
        cents_out = np.empty(len(local), dtype=owner.dtype)
        for b, (a, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            if a < e:
                order = np.argsort(local[a:e], kind="stable")  # stable: centroids stay ascending per document
                np.add(local[a:e][order], b * self.ivf_block, out=docs[a:e], dtype=np.int64, casting="unsafe")
                cents_out[a:e] = owner[a:e][order]
        return docs, cents_out

    def _lists(self, cents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(list numbers b * K + c, starts, lengths) of the centroids' lists in every block, block-major."""
        k = self.codec.num_centroids
        n_blocks = (len(self.ivf_offsets) - 1) // k
        lists = (np.arange(n_blocks, dtype=np.int64)[:, None] * k + np.asarray(cents, dtype=np.int64)).ravel()
        starts = self.ivf_offsets[lists].astype(np.int64)
        return lists, starts, self.ivf_offsets[lists + 1] - starts

    def _build_ids(self) -> None:
        offs, blobs, shift = [], [], 0
        for seg in self.segments:
            o, b = seg.id_table()
            offs.append(o[:-1] + shift)
            blobs.append(b)
            shift += len(b)
        self.id_offsets = np.concatenate(offs + [np.array([shift])]).astype(offsets_dtype(shift))
        self.id_bytes = np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)
        self._id_lookup: dict[str, int] | None = None

    def doc_id(self, g: int) -> str:
        return self.id_bytes[self.id_offsets[g] : self.id_offsets[g + 1]].tobytes().decode("utf-8")

    def lookup(self, ids) -> np.ndarray:
        """Global doc numbers of live external ids (ValueError naming unknown ones)."""
        if self._id_lookup is None:
            self._id_lookup = {self.doc_id(g): g for g in range(self.n_docs) if not self.deleted[g]}
        unknown = [i for i in ids if i not in self._id_lookup]
        if unknown:
            raise ValueError(f"unknown document ids in subset: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        return np.array(sorted({self._id_lookup[i] for i in ids}), dtype=np.int64)

    def close(self) -> None:
        for seg in self.segments:
            seg.close()
        if self.arrays.paged:  # let go of the maps, so closing them frees the file now
            empty = np.zeros(0, np.uint32)
            self.ivf_docs = self.ivf_offsets = self.doc_codes = self.doc_code_offsets = empty
            self.id_offsets, self.id_bytes = empty, np.zeros(0, np.uint8)
        self.arrays.close()
        self.lease.release()

    # ------------------------------------------------------------------ residency
    def index_parts(self) -> dict[str, int]:
        """Bytes of each part of the resident index: what grows with K (centroids), with the (centroid,
        document) pairs (inverted lists, each document's distinct centroid ids), with documents."""
        return {
            "centroids_f32": self.centroids.nbytes,
            "centroids_i8": sum(a.nbytes for a in self.centroids_i8),
            "ivf_docs": self.ivf_docs.nbytes,
            "ivf_offsets": self.ivf_offsets.nbytes,
            "doc_codes": self.doc_codes.nbytes,
            "doc_code_offsets": self.doc_code_offsets.nbytes,
            "ids": self.id_offsets.nbytes + self.id_bytes.nbytes,
            "deleted_and_segments": self.deleted.nbytes + self.seg_base.nbytes,
        }

    def index_bytes(self) -> int:
        """Bytes of the index in RAM (what build_index paged is in the page cache, not counted)."""
        return sum(self.index_parts().values()) - (self.arrays.bytes if self.arrays.paged else 0)

    def tokens(self) -> int:
        return sum(s.n_tokens for s in self.segments)

    def load_codes(self) -> None:
        """Per-token codes in RAM, and each global document's first row in them (document lengths
        are read from the segments' offsets; no separate length table is kept)."""
        self.codes = np.concatenate([s.codes.read_all() for s in self.segments])
        shifts = np.cumsum([0] + [s.n_tokens for s in self.segments])
        self.token_offsets = np.concatenate(
            [s.doc_offsets[:-1].astype(np.int64) + shift for s, shift in zip(self.segments, shifts)] + [shifts[-1:]])

    def load_residuals(self) -> None:
        self.residuals = np.concatenate([s.residuals.read_all() for s in self.segments])

    # ------------------------------------------------------------------ reads
    def read_concat(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """(codes, residuals, lengths, io) of the global docs, concatenated in the given order.

        Read from disk (CRC-checked) in document order, segment by segment, then put
        in the given order with one vectorized gather. When codes are resident only
        the residual rows are read.
        """
        docs = np.asarray(docs, dtype=np.int64)
        if len(docs) == 0:
            s0 = self.segments[0]
            return (np.zeros(0, self.codec.code_dtype), np.zeros((0,) + s0.residuals.row_shape, s0.residuals.dtype),
                    np.zeros(0, np.int64), {"bytes": 0, "calls": 0, "rows": 0})
        order = np.argsort(docs, kind="stable")
        sorted_docs = docs[order]
        seg_of = np.searchsorted(self.seg_base, sorted_docs, side="right") - 1
        codes_parts, res_parts, len_parts = [], [], []
        io = {"bytes": 0, "calls": 0, "rows": 0}
        for s in np.unique(seg_of).tolist():
            sel = np.nonzero(seg_of == s)[0]
            local = sorted_docs[sel] - self.seg_base[s]
            codes, res, lens, seg_io = self.segments[s].read_docs(local, codes=self.codes is None)
            if codes is None:  # codes are resident: take them from RAM
                codes, _ = self.resident_codes(sorted_docs[sel])
            codes_parts.append(codes)
            res_parts.append(res)
            len_parts.append(lens)
            for key, value in seg_io.items():
                io[key] = io.get(key, 0) + value
        codes = np.concatenate(codes_parts)
        res = np.concatenate(res_parts)
        lens_sorted = np.concatenate(len_parts).astype(np.int64)
        if np.array_equal(order, np.arange(len(docs))):
            return codes, res, lens_sorted, io
        starts_sorted = np.concatenate([[0], np.cumsum(lens_sorted)[:-1]])
        where = np.empty(len(docs), dtype=np.int64)  # position of each given doc in the sorted read
        where[order] = np.arange(len(docs))
        lens = lens_sorted[where]
        idx = np.repeat(starts_sorted[where], lens) + ramp(lens)
        return np.take(codes, idx), np.take(res, idx, axis=0), lens, io

    def advise(self, docs: np.ndarray) -> int:
        """Ask the kernel to start reading the global docs' token rows (codes too unless resident) into the
        page cache now, segment by segment; returns the hints given (store/_rawarray.py advise)."""
        docs = np.asarray(docs, dtype=np.int64)
        if not len(docs):
            return 0
        seg_of = np.searchsorted(self.seg_base, docs, side="right") - 1
        n = 0
        for s in np.unique(seg_of).tolist():
            local = np.sort(docs[seg_of == s] - self.seg_base[s])
            n += self.segments[s].advise_docs(local, codes=self.codes is None)
        return n

    def read_rows(self, docs: np.ndarray) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
        """(codes, residuals) of each global doc, in the given order, read from disk (CRC-checked):
        one pair per document, for the prefetcher's cache."""
        codes, res, lens, io = self.read_concat(docs)
        bounds = np.concatenate([[0], np.cumsum(lens)]).tolist()
        # own memory per document: a cached view would pin the whole batch
        return [(codes[a:b].copy(), res[a:b].copy()) for a, b in zip(bounds[:-1], bounds[1:])], io

    def distinct_code_spans(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each doc's distinct centroid ids lie in doc_codes: (starts, counts)."""
        starts = self.doc_code_offsets[docs].astype(np.int64)
        return starts, self.doc_code_offsets[docs + 1] - starts

    def _token_index(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers of docs' tokens in the resident arrays, concatenated, and the lengths."""
        starts = self.token_offsets[docs]
        lens = self.token_offsets[docs + 1] - starts
        return np.repeat(starts, lens) + ramp(lens), lens

    def resident_codes(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes of docs from RAM, concatenated, with their lengths."""
        idx, lens = self._token_index(docs)
        return np.take(self.codes, idx), lens

    def resident_rows(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Codes and residual rows of docs from RAM, concatenated, with their lengths."""
        idx, lens = self._token_index(docs)
        return np.take(self.codes, idx), np.take(self.residuals, idx, axis=0), lens
