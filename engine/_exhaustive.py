"""Exhaustive exact MaxSim over every stored document: the ground truth for tests and benchmarks."""

from __future__ import annotations

import numpy as np

from lodestore.store import Store, as_numpy, compile_where

from ._maxsim import maxsim_concat, top_k
from ._args import check_k, check_queries

BLOCK_TOKENS = 1 << 17


def exhaustive_search(store: Store, query, k: int = 10, *, where: str | None = None, params=None,
                      fixed_order: bool = False):
    """Top-k (id, score) by exact MaxSim against every live, decompressed document.

    query: (q_len, dim) -> one list of hits; (B, q_len, dim) or a list of
    matrices -> one list per query. The store is decoded block by block (each
    block once for the whole batch), so memory stays bounded. where/params: only
    documents whose metadata match (as Searcher.search). fixed_order=True: a document's
    score does not depend on the block or store holding it (maxsim_concat's fixed_order;
    slower): a sharded store's shards searched so and merged equal one store searched so,
    bit for bit. By default the last bit of a score may depend on where the
    document's rows fall in BLAS's tiles.
    """
    k = check_k(k)
    flt = None if where is None else compile_where(where, params, store.metadata_fields)
    single = not isinstance(query, (list, tuple)) and as_numpy(query).ndim == 2
    queries = [as_numpy(query)] if single else [as_numpy(q) for q in query]
    qs = check_queries(store, queries)
    codec = store.codec
    scores: list[list[np.ndarray]] = [[] for _ in qs]
    ids: list[str] = []
    for si, seg in enumerate(store.segments):
        dead = store.deleted(si) if flt is None else store.deleted(si) | ~flt.mask(seg.metadata())
        seg_ids = seg.ids()
        start = 0
        while start < seg.n_docs:
            stop = int(np.searchsorted(seg.doc_offsets, seg.doc_offsets[start] + BLOCK_TOKENS, side="right")) - 1
            stop = min(max(stop, start + 1), seg.n_docs)
            codes, res, lens, _ = seg.read_docs(np.arange(start, stop))
            tokens = codec.decode(codes, res)
            live = ~dead[start:stop]
            for qi, q in enumerate(qs):
                scores[qi].append(maxsim_concat(q, tokens, lens, fixed_order=fixed_order)[live])
            ids.extend(i for i, ok in zip(seg_ids[start:stop], live) if ok)
            start = stop
    results = []
    for per_block in scores:
        s = np.concatenate(per_block) if per_block else np.zeros(0, np.float32)
        results.append([(ids[i], float(s[i])) for i in top_k(s, k)])
    return results[0] if single else results
