"""Keyword postings: each document's (term, frequency) pairs over its segment's term table.

The store never tokenizes. Its caller (lodestore/keyword.py) hands in each document's
terms, already tokenized, with the name of the tokenizer that made them; a segment
keeps them beside its token rows (FORMAT.md 8.6), written and committed with them:

  keyword_term_offsets (V+1,) int64   CSR over keyword_term_bytes
  keyword_term_bytes   (B,)   uint8   the segment's V distinct terms, UTF-8, ascending
  keyword_doc_offsets  (N+1,) int64   document d's postings are [o[d], o[d+1])
  keyword_terms        (P,)   uint32  term numbers, ascending within a document, delta-encoded
  keyword_tfs          (P,)   uint32  how often the document holds the term (>= 1)

plus the segment attribute `keywords` = the tokenizer's name. A document's length
is the sum of its frequencies. Compaction carries postings over (`take`, `concat`)
without a tokenizer: term tables are merged, deleted documents' postings dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._errors import CorruptStoreError
from ._safefs import StorePath
from ._smallarray import read_small
from ._structure import check_csr

KEYWORD_ARRAYS = ("keyword_term_offsets", "keyword_term_bytes", "keyword_doc_offsets", "keyword_terms",
                  "keyword_tfs")
KEYWORDS_ATTR = "keywords"  # segment attribute: the tokenizer's name (absent: no postings)
KEYWORDS_FEATURE = "keywords"  # the writer feature of a store whose segments may hold postings (FORMAT.md 6)
TOKENIZER_NAME = re.compile(r"[\x21-\x7e]{1,200}\Z")  # printable ASCII without spaces


def check_tokenizer(name: Any, where: object = "keywords") -> str:
    """A tokenizer name: 1-200 printable ASCII characters, no spaces (ValueError otherwise)."""
    if not isinstance(name, str) or not TOKENIZER_NAME.match(name):
        raise ValueError(f"{where}: tokenizer name {name!r} is not 1-200 printable ASCII characters without spaces")
    return name


@dataclass(frozen=True)
class Keywords:
    """The postings of N documents: CSR by document of (term number into `words`, frequency)."""

    tokenizer: str
    words: list[str]  # distinct terms, ascending
    offsets: np.ndarray  # (N+1,) int64
    terms: np.ndarray  # (P,) int64, ascending within a document
    tfs: np.ndarray  # (P,) int64, >= 1

    @property
    def n(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Each document's length in terms (repeats counted): the sum of its frequencies, int64."""
        doc = np.repeat(np.arange(self.n), np.diff(self.offsets))
        return np.bincount(doc, weights=self.tfs, minlength=self.n).astype(np.int64)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_terms(cls, tokenizer: str, docs: Sequence[Sequence[str]]) -> "Keywords":
        """Postings of documents given as their term lists (repeats counted), made by `tokenizer`.

        ValueError (nothing is stored) for a bad tokenizer name, a document that is not a list
        of terms, or a term that is not a non-empty UTF-8 string.
        """
        check_tokenizer(tokenizer)
        if isinstance(docs, (str, bytes, dict)) or not isinstance(docs, Sequence):
            raise ValueError("keywords must be a list with one list of terms per document")
        vocab: set = set()
        for i, doc in enumerate(docs):
            if isinstance(doc, (str, bytes)) or not isinstance(doc, (list, tuple)):
                raise ValueError(f"keywords of document {i} are {type(doc).__name__}, not a list of terms")
            try:
                vocab.update(doc)
            except TypeError:
                raise ValueError(f"keywords of document {i} hold an unhashable term") from None
        for w in vocab:
            _check_term(w)
        words = sorted(vocab)
        pos = {w: i for i, w in enumerate(words)}
        lens = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        flat = np.fromiter((pos[w] for d in docs for w in d), dtype=np.int64, count=int(lens.sum()))
        pairs, tfs = np.unique(np.repeat(np.arange(len(docs), dtype=np.int64), lens) << 32 | flat,
                               return_counts=True)
        counts = np.bincount(pairs >> 32, minlength=len(docs))
        return cls(tokenizer, words, _offsets(counts), pairs & 0xFFFFFFFF, tfs.astype(np.int64))

    def take(self, idx: np.ndarray) -> "Keywords":
        """Documents `idx` (in that order), over the same term table."""
        idx = np.asarray(idx, dtype=np.int64)
        starts, stops = self.offsets[idx], self.offsets[idx + 1]
        offsets = _offsets(stops - starts)
        flat = np.repeat(starts - offsets[:-1], stops - starts) + np.arange(int(offsets[-1]))
        return Keywords(self.tokenizer, self.words, offsets, self.terms[flat], self.tfs[flat])

    @staticmethod
    def concat(parts: list["Keywords"]) -> "Keywords":
        """Documents of `parts` one after another, over the union of their term tables (one tokenizer)."""
        if not parts:
            raise ValueError("no keyword postings to join")
        if len({p.tokenizer for p in parts}) > 1:
            raise ValueError(f"keyword postings of different tokenizers {sorted({p.tokenizer for p in parts})} "
                             "cannot share a segment")
        tables = {id(p.words): p.words for p in parts}  # batches of one source share its table: remap each once
        words = sorted(set().union(*tables.values())) if len(tables) > 1 else next(iter(tables.values()))
        pos = {w: i for i, w in enumerate(words)}
        remap = {key: np.fromiter((pos[w] for w in t), dtype=np.int64, count=len(t)) for key, t in tables.items()}
        terms = [remap[id(p.words)][p.terms] for p in parts]  # a monotone map: still ascending per document
        counts = np.concatenate([np.diff(p.offsets) for p in parts])
        return Keywords(parts[0].tokenizer, list(words), _offsets(counts), np.concatenate(terms),
                        np.concatenate([p.tfs for p in parts]))

    def pruned(self) -> "Keywords":
        """The same postings over only the terms some document holds (compaction drops deleted documents')."""
        used = np.zeros(len(self.words), dtype=bool)
        used[self.terms] = True
        if used.all():
            return self
        renumber = np.cumsum(used) - 1
        return Keywords(self.tokenizer, [w for w, u in zip(self.words, used.tolist()) if u], self.offsets,
                        renumber[self.terms], self.tfs)

    # ------------------------------------------------------------------ on disk
    def arrays(self) -> dict[str, np.ndarray]:
        """The five segment arrays (FORMAT.md 8.6), by name."""
        encoded = [w.encode("utf-8") for w in self.words]
        lens = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        return {
            "keyword_term_offsets": _offsets(lens),
            "keyword_term_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
            "keyword_doc_offsets": self.offsets.astype(np.int64),
            "keyword_terms": _delta_encode(self.terms, self.offsets).astype(np.uint32),
            "keyword_tfs": self.tfs.astype(np.uint32),
        }


def read_keywords(path: StorePath, n_docs: int, tokenizer: str) -> Keywords:
    """A segment's postings, every chunk CRC-checked and the structure checked (CorruptStoreError naming
    the array): sorted distinct UTF-8 terms, CSR offsets, terms ascending within a document and < V,
    frequencies >= 1."""
    term_offsets = read_small(path / "keyword_term_offsets")
    check_csr(term_offsets, len(term_offsets) - 1, None, path / "keyword_term_offsets", "term offsets")
    blob = read_small(path / "keyword_term_bytes", (int(term_offsets[-1]),)).tobytes()
    words = _words(blob, term_offsets, path / "keyword_term_bytes")
    offsets = read_small(path / "keyword_doc_offsets", (n_docs + 1,))
    check_csr(offsets, n_docs, None, path / "keyword_doc_offsets", "keyword offsets")
    n_postings = int(offsets[-1])
    deltas = read_small(path / "keyword_terms", (n_postings,)).astype(np.int64)
    tfs = read_small(path / "keyword_tfs", (n_postings,)).astype(np.int64)
    terms = _delta_decode(deltas, offsets, len(words), path / "keyword_terms")
    if len(tfs) and int(tfs.min()) < 1:
        raise CorruptStoreError(f"{path / 'keyword_tfs'}: a term frequency is 0")
    return Keywords(tokenizer, words, offsets, terms, tfs)


def _check_term(w: Any) -> None:
    if not isinstance(w, str) or not w:
        raise ValueError(f"keyword term {w!r} is not a non-empty string")
    try:
        w.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"keyword term {w[:40]!r} is not encodable as UTF-8 ({e.reason})") from None


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)


def _words(blob: bytes, offsets: np.ndarray, where: object) -> list[str]:
    """The term table: non-empty UTF-8 strings in strictly ascending order."""
    if len(offsets) > 1 and bool((np.diff(offsets) == 0).any()):
        raise CorruptStoreError(f"{where}: an empty term")
    try:
        words = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    except UnicodeDecodeError as e:
        raise CorruptStoreError(f"{where}: a term is not UTF-8 ({e})") from None
    if any(a >= b for a, b in zip(words, words[1:])):
        raise CorruptStoreError(f"{where}: terms are not sorted and distinct")
    return words


def _delta_encode(terms: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Within each document, the first term number and then the gaps (as ivf_docs, FORMAT.md 8.3)."""
    out = terms.astype(np.int64)
    out[1:] -= terms[:-1]
    starts = offsets[:-1][np.diff(offsets) > 0]
    out[starts] = terms[starts]
    return out


def _delta_decode(deltas: np.ndarray, offsets: np.ndarray, n_terms: int, where: object) -> np.ndarray:
    """Inverse of _delta_encode, checking every document's terms strictly ascend and stay below V."""
    if not len(deltas):
        return deltas
    nonempty = np.diff(offsets) > 0
    first = np.zeros(len(deltas), dtype=bool)
    first[offsets[:-1][nonempty]] = True
    if bool((deltas[~first] == 0).any()):
        raise CorruptStoreError(f"{where}: a document's terms are not strictly ascending")
    csum = np.cumsum(deltas)
    base = np.concatenate([[0], csum])[offsets[:-1]]
    terms = csum - np.repeat(base, np.diff(offsets))
    if int(terms.min()) < 0 or int(terms.max()) >= n_terms:
        raise CorruptStoreError(f"{where}: a term number is not below the segment's {n_terms} terms")
    return terms
