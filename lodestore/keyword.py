"""The keyword (BM25) index of an Index: postings stored per segment, or derived from the stored text.

What is stored (FORMAT.md 8.6): when an Index adds documents, it tokenizes their
title and text here (`document_keywords`) and the store writes each document's
(term, frequency) pairs into the new segment, in the same commit as the vectors
and the text. The keyword index is built from them when a keyword or hybrid search
first needs it:

* per segment (immutable, so loaded once per process and cached by segment name):
  each document's terms, tokenized as bm25s does (lower case, words of two or more
  word characters, English stop words removed, Snowball English stems), as
  (document, term, frequency) triples over one growing term table: read from the
  segment's stored postings when they carry this tokenizer's name (`tokenizer_name`),
  else derived by tokenizing its stored text payloads (segments written before
  postings were stored, or by another tokenizer version), with the same result;
* per generation: the corpus statistics over the live documents only (N, document
  frequencies, average document length; deleted and replaced documents excluded),
  and from them the BM25 weight of every (term, document) pair, in a term-major
  (CSC) layout.

A query sums the weights of its terms' postings (a term repeated in the query
counts again) with the scoring of bm25s' default variant (method "lucene": idf =
ln(1 + (N - df + 0.5) / (df + 0.5)), tf part tf / (tf + k1 (1 - b + b dl / avgdl)),
k1 = 1.5, b = 0.75). Only documents matching at least one query term are returned.
What stored postings cost on disk and save at a process's first keyword search:
docs/BENCHMARKS.md, "Hybrid keyword + MaxSim search". bm25s (the tokenizer) and
PyStemmer load on first use: importing lodestore or a MaxSim search never imports them.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from typing import TYPE_CHECKING, Collection, Iterable, Sequence

import numpy as np

from lodestore.store import Keywords

if TYPE_CHECKING:
    from lodestore.store import Store

K1 = 1.5
B = 0.75
#: Documents read and tokenized per step while deriving or storing postings: bounds the text held in RAM.
DERIVE_SLICE = 4096
#: Bytes of segment postings (read or derived) kept for later KeywordIndexes of this process (a server opens
#: one Index per generation: each reuses the unchanged segments' postings instead of reading them again).
CACHE_BYTES = 256 << 20

_LOCK = threading.Lock()  # guards the term table and the cache (a server searches from several threads)
_TERMS: dict[str, int] = {}  # one term table per process, so cached postings share term ids
_CACHE: "OrderedDict[tuple, SegmentTerms]" = OrderedDict()


@lru_cache(maxsize=None)
def tokenizer_name() -> str:
    """The name stored postings carry (FORMAT.md 8.6): what `tokenize` does, and bm25s' minor version, whose
    tokenizer could change with it; postings of another name are derived again from the text, not used."""
    major_minor = ".".join(version("bm25s").split(".")[:2])
    return f"bm25s-{major_minor}/stopwords-en/snowball-english/1"


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


def keyword_text(title: str | None, text: str | None) -> str:
    """The text BM25 sees for a document: its title and text."""
    return f"{title or ''} {text or ''}"


def payload_text(payload: bytes | None) -> str:
    """The text BM25 sees for a stored document (lodestore/index.py payloads)."""
    if not payload:
        return ""
    d = json.loads(payload)
    return keyword_text(d.get("title"), d.get("text"))


def document_keywords(titles: Sequence[str], texts: Sequence[str]) -> Keywords:
    """The postings the store keeps with documents being added (Store.add's `keywords`): their title and
    text tokenized DERIVE_SLICE documents at a time, exactly as a derivation from their payloads would."""
    return postings([keyword_text(t, x) for t, x in zip(titles[i : i + DERIVE_SLICE], texts[i : i + DERIVE_SLICE])]
                    for i in range(0, len(texts), DERIVE_SLICE))


def postings(slices: Iterable[list[str]]) -> Keywords:
    """Keyword postings of texts given a slice at a time (so only one slice's text is held), in order."""
    name = tokenizer_name()
    parts = [Keywords.from_terms(name, tokenize(texts)) for texts in slices]
    return Keywords.concat(parts) if parts else Keywords.from_terms(name, [])


@dataclass(frozen=True)
class SegmentTerms:
    """One segment's documents as (document, term, frequency) triples, grouped by document in ascending order."""

    n_docs: int
    doc: np.ndarray  # int32 local document numbers
    term: np.ndarray  # int32 ids in the KeywordIndex's term table
    tf: np.ndarray  # int32 term frequencies
    length: np.ndarray  # (n_docs,) int32 terms per document (with repeats)

    @property
    def nbytes(self) -> int:
        return self.doc.nbytes + self.term.nbytes + self.tf.nbytes + self.length.nbytes


@dataclass(frozen=True)
class LivePostings:
    """The BM25 weights of one generation's live documents, term-major; replaced whole on refresh."""

    generation: int | None
    ids: list[str]  # live documents in store order; a posting's document number indexes this
    position: dict[str, int]
    avgdl: float
    ptr: np.ndarray  # (terms + 1,) int64: term t's postings are [ptr[t], ptr[t+1])
    docs: np.ndarray  # int32
    weights: np.ndarray  # float32

    @property
    def nbytes(self) -> int:
        return self.ptr.nbytes + self.docs.nbytes + self.weights.nbytes


_EMPTY = LivePostings(None, [], {}, 0.0, np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32),
                      np.zeros(0, dtype=np.float32))


class KeywordIndex:
    """BM25 over the live documents of one store generation; `refresh()` follows the store's commits.

    stored=False ignores stored postings and derives every segment's from its text (a check, a benchmark).
    """

    def __init__(self, store: "Store", *, stored: bool = True):
        self.store = store
        self.stored = stored
        self.vocab = _TERMS
        self._segments: dict[tuple, SegmentTerms] = {}
        self._live = _EMPTY

    @property
    def ids(self) -> list[str]:
        """The live documents' ids, in store order (what a boolean `allowed` mask is aligned with)."""
        return self._live.ids

    @property
    def n_docs(self) -> int:
        return len(self._live.ids)

    @property
    def avgdl(self) -> float:
        return self._live.avgdl

    # ------------------------------------------------------------------ building
    def refresh(self) -> LivePostings:
        """Bring the index to the store handle's generation (new segments tokenized, statistics recomputed)."""
        with _LOCK:
            if self._live.generation != self.store.generation:
                self._live = self._refresh()
            return self._live

    def _refresh(self) -> LivePostings:
        parts, ids = [], []
        wanted = set()
        for si, entry in enumerate(self.store.manifest.segments):
            key = self._key(si, entry)
            wanted.add(key)
            if key not in self._segments:
                self._segments[key] = _cached(key, lambda: self._load(si) if key[-1] == "stored" else self._derive(si))
            seg_ids = self.store.segments[si].ids()
            live = np.flatnonzero(~self.store.deleted(si))
            parts.append((self._segments[key], live, len(ids)))
            ids.extend(seg_ids[i] for i in live.tolist())
        for key in set(self._segments) - wanted:  # compacted away
            del self._segments[key]
        return self._build(parts, ids)

    def _key(self, si: int, entry) -> tuple:
        """What identifies a committed segment's content: its name (never reused within a store), its
        document count, and its directory's identity (a store removed and made again at the same path);
        last, where its postings come from ("stored" or "derived")."""
        st = os.stat(self.store.root / "segments" / entry.name, follow_symlinks=False)
        tokenizer = self.store.segments[si].keyword_tokenizer
        source = "stored" if self.stored and tokenizer == tokenizer_name() else "derived"
        return (str(self.store.root.resolve()), entry.name, entry.documents, st.st_dev, st.st_ino, st.st_mtime_ns,
                source)

    def _load(self, si: int) -> SegmentTerms:
        """Segment si's stored postings."""
        return self._segment_terms(self.store.segments[si].keywords())

    def _derive(self, si: int) -> SegmentTerms:
        """Segment si's postings made from its stored text (a segment written without them, or by
        another tokenizer), DERIVE_SLICE documents at a time."""
        seg = self.store.segments[si]
        n = self.store.manifest.segments[si].documents

        def texts(start: int) -> list[str]:
            local = np.arange(start, min(n, start + DERIVE_SLICE))
            return [payload_text(p) for p in seg.payloads(local)] if seg.has_payloads else [""] * len(local)

        return self._segment_terms(postings(texts(start) for start in range(0, n, DERIVE_SLICE)))

    def _segment_terms(self, kw: Keywords) -> SegmentTerms:
        """(document, term, frequency) triples of postings, their term numbers mapped into the process's
        term table."""
        table = np.fromiter((self.vocab.setdefault(w, len(self.vocab)) for w in kw.words), dtype=np.int64,
                            count=len(kw.words))
        doc = np.repeat(np.arange(kw.n, dtype=np.int32), np.diff(kw.offsets))
        return SegmentTerms(kw.n, doc, table[kw.terms].astype(np.int32), kw.tfs.astype(np.int32),
                            kw.lengths.astype(np.int32))

    def _build(self, parts: list[tuple[SegmentTerms, np.ndarray, int]], ids: list[str]) -> LivePostings:
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
        n_live, n_terms = len(ids), len(self.vocab)
        avgdl = float(length.mean()) if n_live else 0.0
        df = np.bincount(term, minlength=n_terms).astype(np.float64)
        idf = np.log(1 + (n_live - df + 0.5) / (df + 0.5))
        norm = K1 * ((1 - B) + B * length[doc] / avgdl) if len(doc) else np.zeros(0)
        weights = idf[term] * (tf / (norm + tf))
        order = np.argsort(term, kind="stable")  # term-major; documents ascending within a term
        ptr = np.concatenate([[0], np.cumsum(np.bincount(term, minlength=n_terms))]).astype(np.int64)
        return LivePostings(self.store.generation, ids, {doc_id: i for i, doc_id in enumerate(ids)}, avgdl, ptr,
                            doc[order].astype(np.int32), weights[order].astype(np.float32))

    # ------------------------------------------------------------------ reading
    @property
    def nbytes(self) -> int:
        """Resident bytes of the postings (per-segment triples and the live weights), without the term table."""
        return sum(s.nbytes for s in self._segments.values()) + self._live.nbytes

    def positions(self, ids: Collection[str]) -> np.ndarray:
        """Boolean mask over `self.ids` of the given live ids (ValueError naming unknown ones, as the engine's)."""
        live = self.refresh()
        unknown = [i for i in ids if i not in live.position]
        if unknown:
            raise ValueError(f"unknown document ids in subset: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        mask = np.zeros(len(live.ids), dtype=bool)
        mask[[live.position[i] for i in ids]] = True
        return mask

    def scores(self, query: str, live: LivePostings | None = None) -> np.ndarray:
        """BM25 score of every live document (order of `self.ids`) for one query text, float32."""
        live = live or self.refresh()
        n_terms, n = len(live.ptr) - 1, len(live.ids)
        terms = [t for t in (self.vocab.get(w) for w in tokenize([query])[0]) if t is not None and t < n_terms]
        if not terms or not n:
            return np.zeros(n, dtype=np.float32)
        rows = np.concatenate([np.arange(live.ptr[t], live.ptr[t + 1]) for t in terms])
        return np.bincount(live.docs[rows], weights=live.weights[rows], minlength=n).astype(np.float32)

    def search(self, queries: Sequence[str], k: int, allowed: np.ndarray | Collection[str] | None = None
               ) -> list[list[tuple[str, float]]]:
        """Top-k (id, score) per query among documents matching a query term; ties broken by id.

        allowed: a boolean mask over `self.ids` (after refresh) or a collection of ids;
        documents outside it are never returned (a metadata filter or a subset).
        """
        live = self.refresh()
        mask = None
        if allowed is not None:
            mask = np.asarray(allowed, dtype=bool) if isinstance(allowed, np.ndarray) else self.positions(allowed)
            if mask.shape != (len(live.ids),):
                raise ValueError(f"allowed mask has shape {mask.shape}, expected ({len(live.ids)},)")
        out = []
        for q in queries:
            s = self.scores(q, live)
            if mask is not None:
                s = np.where(mask, s, 0)
            out.append(top_k(s, live.ids, k))
        return out


def _cached(key: tuple, derive) -> SegmentTerms:
    """The process's postings of a segment, derived on a miss; least recently used ones dropped past CACHE_BYTES."""
    terms = _CACHE.get(key)
    if terms is None:
        terms = _CACHE[key] = derive()
        while len(_CACHE) > 1 and sum(t.nbytes for t in _CACHE.values()) > CACHE_BYTES:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return terms


def top_k(scores: np.ndarray, ids: list[str], k: int) -> list[tuple[str, float]]:
    """The k best positive scores as (id, score), by score descending then id ascending."""
    hits = np.flatnonzero(scores > 0)
    if len(hits) > k:
        kth = np.partition(scores[hits], len(hits) - k)[len(hits) - k]
        hits = hits[scores[hits] >= kth]  # every document tied with the k-th stays for the id tie-break
    ranked = sorted(((ids[i], float(scores[i])) for i in hits.tolist()), key=lambda h: (-h[1], h[0]))
    return ranked[:k]
