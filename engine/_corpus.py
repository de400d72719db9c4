"""The resident part of a store as the engine sees it: global doc numbering over segments.

Global document g lives in segment s = searchsorted(seg_base, g, 'right') - 1 at
local number g - seg_base[s]. Everything here is built once at open from
`store`'s public reader API.
"""

from __future__ import annotations

import numpy as np

from store import Store


class Corpus:
    """Centroids, merged inverted lists, doc lengths, deletion mask, compact id table; optionally codes/residuals."""

    def __init__(self, store: Store):
        self.store = store
        self.codec = store.codec
        self.lease = store.lease()  # this generation's files stay on disk until close(), whatever writers do
        try:
            self.segments = store.open_segments()  # our own readers: a commit on `store` closes its own
        except BaseException:
            self.lease.release()
            raise
        self.centroids = self.codec.centroids  # (K, d) float32 for BLAS
        sizes = [s.n_docs for s in self.segments]
        self.seg_base = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_docs = int(self.seg_base[-1])
        self.doclens = np.concatenate([np.diff(s.doc_offsets) for s in self.segments]).astype(np.int32)
        self.deleted = np.concatenate([store.deleted(i) for i in range(len(self.segments))])
        self._build_ivf()
        self._build_ids()
        self.codes: np.ndarray | None = None
        self.residuals: np.ndarray | None = None
        self.token_offsets: np.ndarray | None = None

    def _build_ivf(self) -> None:
        k = self.codec.num_centroids
        cents, docs = [], []
        for base, seg in zip(self.seg_base[:-1], self.segments):
            offsets, seg_docs = seg.ivf()
            cents.append(np.repeat(np.arange(k, dtype=np.int32), np.diff(offsets)))
            docs.append(seg_docs.astype(np.uint32) + np.uint32(base))
        cent = np.concatenate(cents)
        doc = np.concatenate(docs)
        order = np.argsort(cent, kind="stable")  # segments in order: docs stay ascending in each list
        self.ivf_docs = doc[order]
        self.ivf_offsets = np.concatenate([[0], np.cumsum(np.bincount(cent, minlength=k))]).astype(np.int64)
        # The same pairs document-major: each document's distinct centroid ids. Centroid
        # interaction only needs these (a max over a document's tokens is a max over its
        # distinct centroids), at ~1/4 of the per-token codes on the benchmark corpora.
        by_doc = np.argsort(doc, kind="stable")
        self.doc_codes = cent[by_doc].astype(self.codec.code_dtype)
        self.doc_code_offsets = np.concatenate([[0], np.cumsum(np.bincount(doc, minlength=self.n_docs))]).astype(np.int64)

    def _build_ids(self) -> None:
        offs, blobs, shift = [], [], 0
        for seg in self.segments:
            o, b = seg.id_table()
            offs.append(o[:-1] + shift)
            blobs.append(b)
            shift += len(b)
        self.id_offsets = np.concatenate(offs + [np.array([shift])]).astype(np.int64)
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
        self.lease.release()

    # ------------------------------------------------------------------ residency
    def index_bytes(self) -> int:
        return sum(a.nbytes for a in (self.centroids, self.ivf_docs, self.ivf_offsets, self.doc_codes,
                                      self.doc_code_offsets, self.doclens, self.deleted, self.id_offsets,
                                      self.id_bytes, self.seg_base))

    def tokens(self) -> int:
        return int(self.doclens.astype(np.int64).sum())

    def load_codes(self) -> None:
        self.codes = np.concatenate([s.codes.read_all() for s in self.segments])
        self.token_offsets = np.concatenate([[0], np.cumsum(self.doclens, dtype=np.int64)])

    def load_residuals(self) -> None:
        self.residuals = np.concatenate([s.residuals.read_all() for s in self.segments])

    # ------------------------------------------------------------------ reads
    def read_rows(self, docs: np.ndarray) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
        """(codes, residuals) of each global doc, in the given order, read from disk (CRC-checked).

        When codes are resident only the residual rows are read.
        """
        docs = np.asarray(docs, dtype=np.int64)
        order = np.argsort(docs, kind="stable")
        sorted_docs = docs[order]
        seg_of = np.searchsorted(self.seg_base, sorted_docs, side="right") - 1
        out: list = [None] * len(docs)
        io = {"bytes": 0, "calls": 0}
        for s in np.unique(seg_of).tolist():
            sel = np.nonzero(seg_of == s)[0]
            local = sorted_docs[sel] - self.seg_base[s]
            codes, res, lens, seg_io = self.segments[s].read_docs(local, codes=self.codes is None)
            if codes is None:  # codes are resident: take them from RAM
                codes, _ = self.resident_codes(sorted_docs[sel])
            io["bytes"] += seg_io["bytes"]
            io["calls"] += seg_io["calls"]
            bounds = np.concatenate([[0], np.cumsum(lens)]).tolist()
            for j, i in enumerate(sel.tolist()):
                a, b = bounds[j], bounds[j + 1]
                out[order[i]] = (codes[a:b].copy(), res[a:b].copy())  # own memory: a cached view would pin the whole batch
        return out, io

    def distinct_codes(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each doc's distinct centroid ids, concatenated in the given order, with their counts."""
        starts = self.doc_code_offsets[docs]
        lens = self.doc_code_offsets[docs + 1] - starts
        return np.take(self.doc_codes, np.repeat(starts, lens) + _ramp(lens)), lens

    def _token_index(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers of docs' tokens in the resident arrays, concatenated, and the lengths."""
        lens = self.doclens[docs].astype(np.int64)
        return np.repeat(self.token_offsets[docs], lens) + _ramp(lens), lens

    def resident_codes(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes of docs from RAM, concatenated, with their lengths."""
        idx, lens = self._token_index(docs)
        return np.take(self.codes, idx), lens

    def resident_rows(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Codes and residual rows of docs from RAM, concatenated, with their lengths."""
        idx, lens = self._token_index(docs)
        return np.take(self.codes, idx), np.take(self.residuals, idx, axis=0), lens


def _ramp(lengths: np.ndarray) -> np.ndarray:
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) - np.repeat(ends - lengths, lengths)
