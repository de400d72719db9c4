"""Texts to model inputs, ColBERT style: word pieces, [Q]/[D] markers, truncation, padding, skiplist.

A query is ``[CLS] [Q] tokens [SEP]`` padded to ``query_length`` ([MASK], attended or
not, or [PAD], not attended); a document ``[CLS] [D] tokens [SEP]`` cut to
``doc_max_length``, whose padding and skiplist tokens are dropped after the model ran.
The special tokens are the config's ids or, where it names them by string, the ids the
tokenizer gives those strings (:class:`SpecialIds`); an empty prefix means no marker.
Texts are stripped of surrounding whitespace first, as sentence-transformers does (a
byte-level BPE tokenizer would make a token of a leading space; WordPiece drops it anyway).

Only the head of a long text is tokenized (:meth:`Framer.tokenize`): a sequence never
holds more than ``MAX_POSITIONS`` tokens, so tokenizing a 10 MB text whole would build
millions of tokens only to drop them. The cut is exact: the ids returned are those the
whole text would give, up to one past the limit, unless the text averages more than
MAX_CHARS_PER_TOKEN characters per token (a flood of spaces): then they are its head's.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .config import EncoderConfig

if TYPE_CHECKING:
    import tokenizers

#: Characters first tokenized per wanted token: roomy for prose, whose word pieces average
#: well under this with their spaces, so a normal text is tokenized in one call.
CHARS_PER_TOKEN = 8
#: Ceiling of the characters tokenized per wanted token, reached by quadrupling the window
#: while the head gives too few tokens (runs of spaces, characters the tokenizer drops).
#: A text that still gives too few is cut there: its tokens are those of that head.
MAX_CHARS_PER_TOKEN = 512


@dataclass(frozen=True)
class SpecialIds:
    """The token ids that frame a sequence, resolved from an EncoderConfig and a tokenizer."""

    cls: int
    sep: int
    mask: int
    pad: int
    query_marker: int | None  # None: no marker (an empty prefix)
    doc_marker: int | None

    @classmethod
    def resolve(cls, tokenizer: tokenizers.Tokenizer, config: EncoderConfig) -> SpecialIds:
        """Each special token's id: the config's id, or the id of the string it names.

        Refuses a string that is not one token of the tokenizer and an id outside its vocabulary.
        """
        size = tokenizer.get_vocab_size(with_added_tokens=True)

        def one(id_name: str, token_name: str) -> int | None:
            token = getattr(config, token_name)
            if token is None:
                value = getattr(config, id_name)
                if not 0 <= value < size:
                    raise ValueError(f"{id_name}={value} is outside the tokenizer's vocabulary of {size}")
                return value
            if token == "":
                return None
            value = tokenizer.token_to_id(token)
            if value is None:
                raise ValueError(f"{token_name}={token!r} is not a token of the tokenizer")
            return value

        return cls(
            cls=one("cls_token_id", "cls_token"),
            sep=one("sep_token_id", "sep_token"),
            mask=one("mask_token_id", "mask_token"),
            pad=one("pad_token_id", "pad_token"),
            query_marker=one("query_marker_id", "query_prefix"),
            doc_marker=one("doc_marker_id", "document_prefix"),
        )


class Framer:
    """Tokenizes and frames texts for one tokenizer and EncoderConfig; refuses bad input."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, config: EncoderConfig) -> None:
        self.config = config
        self._tokenizer = _prepare_tokenizer(tokenizer)
        #: Token ids dropped from document outputs (config.skiplist resolved), sorted int64.
        self.skip_ids = np.array(sorted(_resolve_skiplist(self._tokenizer, config.skiplist)), dtype=np.int64)
        self.ids = SpecialIds.resolve(self._tokenizer, config)
        q, d = self.ids.query_marker, self.ids.doc_marker
        self._query_head = [self.ids.cls] + ([] if q is None else [q])
        self._doc_head = [self.ids.cls] + ([] if d is None else [d])

    # -- queries ---------------------------------------------------------------

    def queries(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Model input ids and attention mask, (B, query_length) int64.

        [CLS] [Q] tokens [SEP], cut to query_length, then [MASK] padding (query
        expansion), attended unless attend_to_expansion_tokens is off, or, with
        mask_query_padding off, [PAD] padding that the model does not attend to.
        """
        c = self.config
        room = c.query_length - len(self._query_head) - 1
        token_lists = self.tokenize(texts, room)
        pad_id = self.ids.mask if c.mask_query_padding else self.ids.pad
        ids = np.full((len(token_lists), c.query_length), pad_id, dtype=np.int64)
        attended = c.mask_query_padding and c.attend_to_expansion_tokens
        mask = np.full(ids.shape, int(attended), dtype=np.int64)
        for row, tokens in enumerate(token_lists):
            seq = [*self._query_head, *tokens[:room], self.ids.sep]
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return ids, mask

    # -- documents -------------------------------------------------------------

    def documents(self, texts: list[str], stacklevel: int) -> list[list[int]]:
        """Model input ids of each text: [CLS] [D] tokens [SEP], cut to doc_max_length.

        Warns, at ``stacklevel`` counted from this method (the user's call), how many texts were cut.
        """
        c = self.config
        room = c.doc_max_length - len(self._doc_head) - 1
        token_lists = self.tokenize(texts, room)
        truncated = sum(len(t) > room for t in token_lists)
        if truncated:
            warnings.warn(
                f"{truncated} document(s) truncated to doc_max_length={c.doc_max_length} tokens",
                stacklevel=stacklevel,
            )
        return [[*self._doc_head, *t[:room], self.ids.sep] for t in token_lists]

    def keep_doc_tokens(self, ids: np.ndarray, mask: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """The vectors of one document without its padding and skiplist tokens."""
        keep = mask.astype(bool) & ~np.isin(ids, self.skip_ids)
        return np.ascontiguousarray(vectors[keep])

    # -- word pieces -----------------------------------------------------------

    def tokenize(self, texts: list[str], limit: int) -> list[list[int]]:
        """Word-piece ids of each text without special tokens: the first ``limit + 1`` of them at most.

        Getting one more than ``limit`` tells a caller the text is longer than it keeps.
        Only a head of each text is tokenized, cut at a whitespace before
        ``(limit + 1) * CHARS_PER_TOKEN`` characters; the last word of a cut head is
        dropped (a word the cut may have split), and a head that then gives fewer than
        ``limit + 1`` tokens is retried four times longer, up to MAX_CHARS_PER_TOKEN.
        """
        _check_texts(texts)
        texts = [text.strip() for text in texts]  # the same object when there is nothing to strip
        want = limit + 1
        window, ceiling = want * CHARS_PER_TOKEN, want * MAX_CHARS_PER_TOKEN
        heads = [_head(text, window) for text in texts]
        encodings = self._tokenizer.encode_batch(heads, add_special_tokens=False)
        token_lists = []
        for i, (text, head, encoding) in enumerate(zip(texts, heads, encodings)):
            tokens = _whole_word_ids(encoding, cut=len(head) < len(text))
            size = window
            while len(tokens) < want and len(head) < len(text) and size < ceiling:
                size = min(size * 4, ceiling)
                head = _head(text, size)
                encoding = self._tokenizer.encode(head, add_special_tokens=False)
                tokens = _whole_word_ids(encoding, cut=len(head) < len(text))
            if len(tokens) < want and len(head) < len(text):
                tokens = encoding.ids  # at the ceiling: the head's own tokens
            if not tokens:
                where = "" if len(head) == len(text) else f" in its first {len(head)} characters"
                raise ValueError(f"text {i} has no tokens{where}: {head[:200]!r}")
            token_lists.append(list(tokens[:want]))
        return token_lists


def pad(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence: ids and attention mask, int64."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def _check_texts(texts: object) -> None:
    """A list of non-blank strings (checked without copying a long text)."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise ValueError(f"expected a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"text {i} is {type(text).__name__}, not str")
        if not text or text.isspace():
            raise ValueError(f"text {i} is empty")


def _head(text: str, size: int) -> str:
    """``text`` cut to at most ``size`` characters, before a whitespace in the second half if there is one."""
    if len(text) <= size:
        return text
    for end in range(size, size // 2, -1):
        if text[end].isspace():
            return text[:end]
    return text[:size]


def _whole_word_ids(encoding: tokenizers.Encoding, cut: bool) -> list[int]:
    """The ids of an encoding; of a cut head, without its last word (it may continue past the cut)."""
    ids = encoding.ids
    if not cut or not ids:
        return ids
    words = encoding.word_ids
    last = words[-1]
    if last is None:
        return []  # no word boundaries known: nothing is certain
    end = len(words)
    while end > 0 and words[end - 1] == last:
        end -= 1
    return ids[:end]


def _prepare_tokenizer(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """Turn off the file's own padding and truncation: the framer frames sequences itself."""
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _resolve_skiplist(tokenizer: tokenizers.Tokenizer, skiplist: tuple[int | str, ...]) -> set[int]:
    """Token ids of the skiplist: a string entry is a token of the vocabulary (as PyLate looks
    its skiplist words up) or else must tokenize to exactly one token."""
    ids = set()
    for entry in skiplist:
        if isinstance(entry, int):
            ids.add(entry)
            continue
        if (token_id := tokenizer.token_to_id(entry)) is not None:
            ids.add(token_id)
            continue
        pieces = tokenizer.encode(entry, add_special_tokens=False).ids
        if len(pieces) != 1:
            raise ValueError(f"skiplist entry {entry!r} is {len(pieces)} tokens, not one")
        ids.add(pieces[0])
    return ids
