"""Merge the segments' inverted lists into the engine's two views of the (centroid, document) pairs.

Centroid-major (probing): the documents of each list as uint16 offsets inside blocks of IVF_BLOCK
documents, block by block: list (b, c) is ivf_docs[ivf_offsets[b * K + c] : ivf_offsets[b * K + c + 1]],
documents ascending. Half the bytes of uint32 document numbers (docs/BENCHMARKS.md 4.1).
Document-major (centroid interaction): each document's distinct centroid ids, ascending:
doc_codes[doc_code_offsets[d] : doc_code_offsets[d + 1]].

Built a segment at a time (segments hold consecutive document ranges, so document-major output is
their concatenation, and a block's lists are complete once the segments before its end are read):
the memory it needs beyond its outputs is one segment's pairs and one block's, whatever the
store's size. The outputs come from `arrays` (engine/_paged.py): RAM, or a memory-mapped file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IVF_BLOCK = 1 << 16  # documents per block of the inverted lists (uint16 offsets inside a block)


@dataclass
class Pairs:
    ivf_docs: np.ndarray          # (E,) uint16: document offsets inside their block, list by list
    ivf_offsets: np.ndarray       # (blocks * K + 1,) uint32 or int64
    doc_codes: np.ndarray         # (E,) the codec's code dtype: each document's distinct centroid ids
    doc_code_offsets: np.ndarray  # (N + 1,) uint32 or int64


def offsets_dtype(last: int) -> np.dtype:
    """uint32 while the offsets fit (half the bytes of the resident offset tables), else int64."""
    return np.dtype(np.uint32) if last < (1 << 32) else np.dtype(np.int64)


def pairs_bytes(n_pairs: int, n_docs: int, k: int, code_dtype, block_docs: int) -> int:
    """Bytes merge_pairs' outputs take, known before they are built (for the memory budget)."""
    n_blocks = max(1, -(-n_docs // block_docs))
    off = offsets_dtype(n_pairs).itemsize
    return n_pairs * (2 + np.dtype(code_dtype).itemsize) + (n_blocks * k + 1 + n_docs + 1) * off


def merge_pairs(segments, seg_base: np.ndarray, k: int, code_dtype, n_pairs: int, arrays,
                block_docs: int) -> Pairs:
    """The merged views of `segments`' inverted lists (segment i's documents start at seg_base[i])
    in blocks of block_docs documents; n_pairs: the lists' total length (checked against the segments)."""
    n_docs = int(seg_base[-1])
    n_blocks = max(1, -(-n_docs // block_docs))
    off_dtype = offsets_dtype(n_pairs)
    ivf_docs = arrays.empty(n_pairs, np.uint16)
    doc_codes = arrays.empty(n_pairs, code_dtype)
    doc_counts = np.zeros(n_docs, dtype=np.int64)
    list_counts = np.zeros(n_blocks * k, dtype=np.int64)
    done_doc = done_ivf = 0  # pairs written so far in each view
    # the current block's pairs, document-major: (centroids, documents as offsets inside the block), each a
    # copy, so a segment's arrays are freed before the next segment's are read
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    block = 0  # the block being gathered
    cent_dtype = np.dtype(code_dtype) if k <= np.iinfo(code_dtype).max + 1 else np.dtype(np.int32)

    def flush_block() -> None:
        nonlocal done_ivf, block
        cents = np.concatenate([c for c, _ in pending]) if pending else np.zeros(0, cent_dtype)
        docs = np.concatenate([d for _, d in pending]) if pending else np.zeros(0, np.uint16)
        pending.clear()
        order = np.argsort(cents, kind="stable")  # stable: documents stay ascending in each list
        ivf_docs[done_ivf : done_ivf + len(order)] = docs[order]
        list_counts[block * k : (block + 1) * k] = np.bincount(cents, minlength=k)
        done_ivf += len(order)
        block += 1

    # Per segment, the transient arrays are its lists (uint32), their centroids (the code dtype), one
    # int64 permutation and the permuted copies: the open's peak above its outputs (one segment's pairs).
    for base, seg in zip(seg_base[:-1].tolist(), segments):
        offsets, local = seg.ivf()
        by_doc = np.argsort(local, kind="stable")  # document-major; centroids stay ascending in each document
        doc = local[by_doc]  # document numbers inside the segment, uint32
        del local
        cent = np.repeat(np.arange(k, dtype=cent_dtype), np.diff(offsets))[by_doc]
        del by_doc
        if done_doc + len(doc) > n_pairs:
            raise ValueError(f"{seg.path}: more (centroid, document) pairs than its ivf_offsets said")
        doc_codes[done_doc : done_doc + len(doc)] = cent
        done_doc += len(doc)
        doc_counts[base : base + seg.n_docs] = np.bincount(doc, minlength=seg.n_docs)
        stop = base + seg.n_docs
        at = 0  # pairs of this segment handed on so far
        while True:  # hand this segment's pairs to the blocks they fall in
            end = min((block + 1) * block_docs, n_docs)
            cut = int(np.searchsorted(doc, max(end - base, 0), side="left"))
            inside = doc[at:cut].astype(np.int64)
            inside += base - block * block_docs  # offsets inside the block: 0 <= x < block_docs <= 65,536
            pending.append((cent[at:cut].copy(), inside.astype(np.uint16)))
            del inside
            at = cut
            if stop < end:
                break  # the block goes on in the next segment
            flush_block()
            if block >= n_blocks:
                break
        del doc, cent
    if done_doc != n_pairs or done_ivf != n_pairs:
        raise ValueError(f"the segments' inverted lists hold {done_doc:,} pairs, not {n_pairs:,}")
    ivf_offsets = arrays.empty(n_blocks * k + 1, off_dtype)
    ivf_offsets[0] = 0
    np.cumsum(list_counts, out=ivf_offsets[1:], dtype=off_dtype)
    doc_code_offsets = arrays.empty(n_docs + 1, off_dtype)
    doc_code_offsets[0] = 0
    np.cumsum(doc_counts, out=doc_code_offsets[1:], dtype=off_dtype)
    return Pairs(ivf_docs, ivf_offsets, doc_codes, doc_code_offsets)
