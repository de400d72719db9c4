"""The keyword (BM25) index of an Index: postings derived from the stored text, per segment.

What is stored: nothing beyond the documents' text payloads (FORMAT.md section 8.5),
which every Index already writes in the same commit as the vectors. The keyword
index is derived from them when a keyword or hybrid search first needs it:

* per segment (immutable, so derived once per process and cached by segment name):
  each document's terms, tokenized as bm25s does (lower case, words of two or more
  word characters, English stop words removed, Snowball English stems), as
  (document, term, frequency) triples over one growing term table;
* per generation: the corpus statistics over the live documents only (N, document
  frequencies, average document length; deleted and replaced documents excluded),
  and from them the BM25 weight of every (term, document) pair, in a term-major
  (CSC) layout.

A query sums the weights of its terms' postings (a term repeated in the query
counts again) with the scoring of bm25s' default variant (method "lucene": idf =
ln(1 + (N - df + 0.5) / (df + 0.5)), tf part tf / (tf + k1 (1 - b + b dl / avgdl)),
k1 = 1.5, b = 0.75). Only documents matching at least one query term are returned.
Why derive instead of store, and what it costs: docs/BENCHMARKS.md, "Hybrid
keyword + MaxSim search". bm25s (the tokenizer) and PyStemmer load on first use:
importing lodestore or a MaxSim search never imports them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection, Sequence

import numpy as np

if TYPE_CHECKING:
    from lodestore.store import Store

K1 = 1.5
B = 0.75
#: Documents read and tokenized per step while deriving a segment's postings: bounds the text held in RAM.
DERIVE_SLICE = 4096


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Terms of each text: bm25s.tokenize with English stop words and the Snowball English stemmer."""
    import bm25s
    import Stemmer

    terms = bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer(Stemmer), return_ids=False,
                           show_progress=False, allow_empty=False)
    return [[w for w in doc if w] for doc in terms]  # an empty text comes back as [""]


_STEMMER = None


def _stemmer(module):
    global _STEMMER
    if _STEMMER is None:
        _STEMMER = module.Stemmer("english")
    return _STEMMER


def payload_text(payload: bytes | None) -> str:
    """The text BM25 sees for a stored document: its title and text (lodestore/index.py payloads)."""
    if not payload:
        return ""
    d = json.loads(payload)
    return f"{d.get('title') or ''} {d.get('text') or ''}"


@dataclass(frozen=True)
class SegmentTerms:
    """One segment's documents as (document, term, frequency) triples, sorted by document then term."""

    n_docs: int
    doc: np.ndarray  # int32 local document numbers
    term: np.ndarray  # int32 ids in the KeywordIndex's term table
    tf: np.ndarray  # int32 term frequencies
    length: np.ndarray  # (n_docs,) int32 terms per document (with repeats)

    @property
    def nbytes(self) -> int:
        return self.doc.nbytes + self.term.nbytes + self.tf.nbytes + self.length.nbytes


class KeywordIndex:
    """BM25 over the live documents of one store generation; `refresh()` follows the store's commits."""

    def __init__(self, store: "Store"):
        self.store = store
        self.vocab: dict[str, int] = {}
        self._segments: dict[tuple[str, int], SegmentTerms] = {}
        self.generation: int | None = None
        self.ids: list[str] = []
        self._position: dict[str, int] | None = None
        self.n_docs = 0
        self.avgdl = 0.0
        self._ptr = np.zeros(1, dtype=np.int64)
        self._docs = np.zeros(0, dtype=np.int32)
        self._weights = np.zeros(0, dtype=np.float32)

    # ------------------------------------------------------------------ building
    def refresh(self) -> None:
        """Bring the index to the store handle's generation (new segments tokenized, statistics recomputed)."""
        if self.generation == self.store.generation:
            return
        parts, ids = [], []
        entries = self.store.manifest.segments
        wanted = set()
        for si, entry in enumerate(entries):
            key = (entry.name, entry.documents)  # a committed segment name is never reused for other content
            wanted.add(key)
            if key not in self._segments:
                self._segments[key] = self._derive(si)
            seg_ids = self.store.segments[si].ids()
            live = np.flatnonzero(~self.store.deleted(si))
            parts.append((self._segments[key], live, len(ids)))
            ids.extend(seg_ids[i] for i in live.tolist())
        for key in set(self._segments) - wanted:  # compacted away
            del self._segments[key]
        self._build(parts, len(ids))
        self.ids, self._position = ids, None
        self.generation = self.store.generation

    def _derive(self, si: int) -> SegmentTerms:
        """Tokenize segment si's stored text into (document, term, frequency) triples."""
        seg = self.store.segments[si]
        n = self.store.manifest.segments[si].documents
        docs, terms, lengths = [], [], np.zeros(n, dtype=np.int32)
        for start in range(0, n, DERIVE_SLICE):
            local = np.arange(start, min(n, start + DERIVE_SLICE))
            payloads = seg.payloads(local) if seg.has_payloads else None
            texts = [payload_text(p) for p in payloads] if payloads else [""] * len(local)
            for d, words in zip(local.tolist(), tokenize(texts)):
                ids = np.fromiter((self.vocab.setdefault(w, len(self.vocab)) for w in words), dtype=np.int32,
                                  count=len(words))
                lengths[d] = len(ids)
                docs.append(np.full(len(ids), d, dtype=np.int64))
                terms.append(ids.astype(np.int64))
        doc = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)
        term = np.concatenate(terms) if terms else np.zeros(0, dtype=np.int64)
        pairs, tf = np.unique(doc << 32 | term, return_counts=True)
        return SegmentTerms(n, (pairs >> 32).astype(np.int32), (pairs & 0xFFFFFFFF).astype(np.int32),
                            tf.astype(np.int32), lengths)

    def _build(self, parts: list[tuple[SegmentTerms, np.ndarray, int]], n_live: int) -> None:
        """The BM25 weights of every live (term, document) pair, term-major."""
        docs, terms, tfs, lengths = [], [], [], []
        for seg, live, base in parts:
            renumber = np.full(seg.n_docs, -1, dtype=np.int64)
            renumber[live] = base + np.arange(len(live))
            keep = renumber[seg.doc] >= 0
            docs.append(renumber[seg.doc[keep]])
            terms.append(seg.term[keep])
            tfs.append(seg.tf[keep])
            lengths.append(seg.length[live])
        doc = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)
        term = np.concatenate(terms) if terms else np.zeros(0, dtype=np.int32)
        tf = np.concatenate(tfs).astype(np.float64) if tfs else np.zeros(0)
        length = np.concatenate(lengths).astype(np.float64) if lengths else np.zeros(0)
        self.n_docs = n_live
        self.avgdl = float(length.mean()) if n_live else 0.0
        df = np.bincount(term, minlength=len(self.vocab)).astype(np.float64)
        idf = np.log(1 + (n_live - df + 0.5) / (df + 0.5))
        norm = K1 * ((1 - B) + B * length[doc] / self.avgdl) if len(doc) else np.zeros(0)
        weights = idf[term] * (tf / (norm + tf))
        order = np.argsort(term, kind="stable")  # term-major; documents ascending within a term
        self._ptr = np.concatenate([[0], np.cumsum(np.bincount(term, minlength=len(self.vocab)))]).astype(np.int64)
        self._docs = doc[order].astype(np.int32)
        self._weights = weights[order].astype(np.float32)

    # ------------------------------------------------------------------ reading
    @property
    def nbytes(self) -> int:
        """Resident bytes of the postings (per-segment triples and the live weights), without the term table."""
        cached = sum(s.nbytes for s in self._segments.values())
        return cached + self._ptr.nbytes + self._docs.nbytes + self._weights.nbytes

    def positions(self, ids: Collection[str]) -> np.ndarray:
        """Boolean mask over `self.ids` of the given live ids (ValueError naming unknown ones, as the engine's)."""
        if self._position is None:
            self._position = {doc_id: i for i, doc_id in enumerate(self.ids)}
        unknown = [i for i in ids if i not in self._position]
        if unknown:
            raise ValueError(f"unknown document ids in subset: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        mask = np.zeros(len(self.ids), dtype=bool)
        mask[[self._position[i] for i in ids]] = True
        return mask

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every live document (order of `self.ids`) for one query text, float32."""
        self.refresh()
        ids = [self.vocab[w] for w in tokenize([query])[0] if w in self.vocab]
        if not ids or not self.n_docs:
            return np.zeros(self.n_docs, dtype=np.float32)
        spans = [np.arange(self._ptr[t], self._ptr[t + 1]) for t in ids]
        rows = np.concatenate(spans)
        return np.bincount(self._docs[rows], weights=self._weights[rows], minlength=self.n_docs).astype(np.float32)

    def search(self, queries: Sequence[str], k: int, allowed: np.ndarray | Collection[str] | None = None
               ) -> list[list[tuple[str, float]]]:
        """Top-k (id, score) per query among documents matching a query term; ties broken by id.

        allowed: a boolean mask over `self.ids` (after refresh) or a collection of ids;
        documents outside it are never returned (a metadata filter or a subset).
        """
        self.refresh()
        mask = None
        if allowed is not None:
            mask = np.asarray(allowed, dtype=bool) if isinstance(allowed, np.ndarray) else self.positions(allowed)
            if mask.shape != (self.n_docs,):
                raise ValueError(f"allowed mask has shape {mask.shape}, expected ({self.n_docs},)")
        out = []
        for q in queries:
            s = self.scores(q)
            if mask is not None:
                s = np.where(mask, s, 0)
            out.append(top_k(s, self.ids, k))
        return out


def top_k(scores: np.ndarray, ids: list[str], k: int) -> list[tuple[str, float]]:
    """The k best positive scores as (id, score), by score descending then id ascending."""
    hits = np.flatnonzero(scores > 0)
    if len(hits) > k:
        kth = np.partition(scores[hits], len(hits) - k)[len(hits) - k]
        hits = hits[scores[hits] >= kth]  # every document tied with the k-th stays for the id tie-break
    ranked = sorted(((ids[i], float(scores[i])) for i in hits.tolist()), key=lambda h: (-h[1], h[0]))
    return ranked[:k]
