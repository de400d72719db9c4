"""Compaction: the live documents of every segment, copied into one new segment.

Rows are copied as stored (centroid codes and residual bytes, whatever the codec):
nothing is decoded or re-encoded, so compaction is lossless and does not depend on
the codec. The commit itself (fsync, manifest, clean-up) is Store.compact's.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ._segment import SegmentReader, SegmentWriter

COPY_TOKENS = 1 << 17  # token rows read per copy step: bounds compaction memory


def copy_documents(src: SegmentReader, docs: np.ndarray, ids: list[str], dst: SegmentWriter) -> None:
    """Append local documents `docs` of `src` (ascending) to `dst`, every per-document column as stored.

    THE place that knows a segment's per-document columns. Today they are: the token
    rows (codes + residual bytes, copied byte for byte), the document lengths, the
    external ids (`ids[d]` is the id of local document d of `src`; the inverted lists
    are rebuilt by `dst` from the codes), the payloads (when `dst` keeps them, a
    document of a source without payloads gets b"") and the typed metadata (when `dst`
    keeps it; a source without any has all fields null) and the keyword postings (when `dst`
    keeps them, which the caller decides by `common_tokenizer`; term numbers are remapped to
    the merged term table at finish, never re-tokenized). A new per-document column MUST
    be read from `src` for `docs` and handed to `dst` here, or compaction drops it;
    tests/store/test_compact.py has a tripwire on SegmentWriter.append's signature
    and the segment's array names.
    """
    keywords = None if dst.keywords is None else src.keywords()  # read once: batches share its term table
    for batch in _batches(src, docs):
        codes, residuals, lens, _ = src.read_docs(batch)
        payloads = None
        if dst.payloads is not None:
            payloads = src.payloads(batch) if src.has_payloads else [b""] * len(batch)
        metadata = None if dst.metadata is None else src.metadata().take(batch)
        postings = None if keywords is None else keywords.take(batch)
        dst.append([ids[d] for d in batch.tolist()], lens, codes, residuals, payloads, metadata, postings)


def common_tokenizer(segments: list[SegmentReader]) -> str | None:
    """The tokenizer of the postings every one of `segments` holds, or None when one holds none or
    they differ (the merged segment then has none: its reader derives them from the text)."""
    names = {seg.keyword_tokenizer for seg in segments}
    return names.pop() if len(names) == 1 else None


def _batches(src: SegmentReader, docs: np.ndarray) -> Iterator[np.ndarray]:
    """Split ascending `docs` into runs of about COPY_TOKENS token rows (at least one document each)."""
    lens = np.diff(src.doc_offsets)[docs]
    ends = np.cumsum(lens)
    start = 0
    while start < len(docs):
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + COPY_TOKENS, side="right")))
        yield docs[start:stop]
        start = stop


def far_tokens_estimate(parts: list[tuple[int | None, int, int]]) -> int | None:
    """The merged segment's far-token count from its sources' (far_tokens, tokens, live tokens).

    Per-token flags are not stored, so a partly deleted source contributes its share in
    proportion to the tokens that survive. None when some source has no count.
    """
    if any(far is None for far, _, _ in parts):
        return None
    return int(round(sum(far * live / tokens for far, tokens, live in parts if tokens)))
