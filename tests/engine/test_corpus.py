"""The resident index (engine/_corpus.py): blocked inverted lists and narrowed offset tables."""

from __future__ import annotations

import numpy as np

import lodestore
from lodestore.engine import _corpus


def _lists_by_hand(store) -> dict[int, set[int]]:
    """centroid -> global documents holding it, from every segment's own inverted lists."""
    out: dict[int, set[int]] = {}
    base = 0
    for seg in store.open_segments():
        offsets, docs = seg.ivf()
        for c in range(len(offsets) - 1):
            out.setdefault(c, set()).update(int(d) + base for d in docs[offsets[c] : offsets[c + 1]])
        base += seg.n_docs
        seg.close()
    return out


def test_probed_docs_in_small_blocks_match_the_segments_lists(engine_store, monkeypatch):
    monkeypatch.setattr(_corpus, "IVF_BLOCK", 64)  # 1000 documents -> 16 blocks
    truth = _lists_by_hand(engine_store)
    c = _corpus.Corpus(engine_store)
    try:
        assert (len(c.ivf_offsets) - 1) // c.codec.num_centroids == 16
        assert c.ivf_docs.dtype == np.uint16 and c.ivf_offsets.dtype == np.uint32
        rng = np.random.default_rng(0)
        for _ in range(20):
            cents = np.unique(rng.integers(0, c.codec.num_centroids, size=rng.integers(1, 12)))
            docs, owners = c.probed_docs(cents, with_centroids=True)
            assert sorted(docs.tolist()) == sorted(d for x in cents.tolist() for d in truth.get(x, ()))
            assert all(int(d) in truth[int(o)] for d, o in zip(docs, owners))
        for g in range(0, c.n_docs, 97):  # document-major view: each document's distinct ids
            ids = set(c.doc_codes[c.doc_code_offsets[g] : c.doc_code_offsets[g + 1]].tolist())
            assert ids == {x for x, ds in truth.items() if g in ds}
    finally:
        c.close()


def test_search_does_not_depend_on_the_block_size(engine_store, engine_queries, monkeypatch):
    with lodestore.Searcher(engine_store, memory_budget="auto") as whole:
        want = whole.search(engine_queries, k=10)
    monkeypatch.setattr(_corpus, "IVF_BLOCK", 64)
    with lodestore.Searcher(engine_store, memory_budget="auto") as blocked:
        assert blocked.search(engine_queries, k=10) == want


def test_read_concat_returns_rows_in_the_given_order(engine_store):
    """Rows read from disk (both segments, any order, repeats) equal the resident arrays' rows."""
    c = _corpus.Corpus(engine_store)
    try:
        c.load_codes()
        c.load_residuals()
        rng = np.random.default_rng(1)
        for docs in (rng.permutation(c.n_docs)[:40], np.array([999, 0, 600, 599, 0]), np.arange(5)):
            want_codes, want_res, want_lens = c.resident_rows(docs)
            codes_resident = c.codes
            c.codes = None  # read the codes from disk too
            codes, res, lens, io = c.read_concat(docs)
            c.codes = codes_resident
            assert np.array_equal(lens, want_lens) and np.array_equal(codes, want_codes)
            assert np.array_equal(res, want_res) and io["calls"] > 0
            per_doc, _ = c.read_rows(docs)
            assert [len(x[0]) for x in per_doc] == lens.tolist()
            assert np.array_equal(np.concatenate([x[1] for x in per_doc]), want_res)
    finally:
        c.close()


def test_search_without_prefetch_reads_through(engine_store, engine_queries, monkeypatch):
    from lodestore.engine import _budget

    monkeypatch.setattr(_budget, "SMALL_STORE", 0)  # the test store would otherwise be all-in-RAM
    monkeypatch.setattr(_budget, "AUTO_CODES", 0)  # and its codes resident
    with lodestore.Searcher(engine_store, memory_budget="auto", ndocs=40) as s:
        assert s.placement.name == "disk" and s.placement.cache_bytes == 0
        s.search(engine_queries[:3], k=10)
        st = s.stats()  # every survivor's rows read once, for residual interaction and exact re-ranking both
        assert st["hits"] == 0 and st["misses"] == 3 * s.ndocs and st["cache_bytes"] == 0 and st["bytes_read"] > 0
