"""The index (engine/_corpus.py, engine/_pairs.py): blocked inverted lists and narrowed offset tables,
in RAM or paged from a memory-mapped file (engine/_paged.py)."""

from __future__ import annotations

import numpy as np
import pytest

import lodestore
from lodestore.engine import _corpus, _pairs


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


def _open(store, paged: bool = False, directory=None) -> _corpus.Corpus:
    c = _corpus.Corpus(store)
    c.build_index(paged, directory)
    return c


# 1000 documents in segments of 600 + 400: blocks of 64 (16; the segment boundary inside one), of 200
# (the boundary on one), of 2**16 (one block, the default at this size)
@pytest.mark.parametrize("block,paged", [(64, False), (200, False), (1 << 16, False), (64, True)])
def test_probed_docs_in_blocks_match_the_segments_lists(engine_store, monkeypatch, tmp_path, block, paged):
    monkeypatch.setattr(_pairs, "IVF_BLOCK", block)
    truth = _lists_by_hand(engine_store)
    c = _open(engine_store, paged, tmp_path)
    try:
        assert (len(c.ivf_offsets) - 1) // c.codec.num_centroids == -(-1000 // block)
        assert c.ivf_docs.dtype == np.uint16 and c.ivf_offsets.dtype == np.uint32
        assert len(c.ivf_docs) == len(c.doc_codes) == c.n_pairs == sum(len(v) for v in truth.values())
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
    monkeypatch.setattr(_pairs, "IVF_BLOCK", 64)
    with lodestore.Searcher(engine_store, memory_budget="auto") as blocked:
        assert blocked.search(engine_queries, k=10) == want


def test_read_concat_returns_rows_in_the_given_order(engine_store):
    """Rows read from disk (both segments, any order, repeats) equal the resident arrays' rows."""
    c = _open(engine_store)
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


def test_a_paged_index_is_the_resident_index_in_a_file_that_leaves_nothing_behind(engine_store, tmp_path):
    resident, paged = _open(engine_store), _open(engine_store, True, tmp_path)
    try:
        for name in ("ivf_docs", "ivf_offsets", "doc_codes", "doc_code_offsets", "id_offsets", "id_bytes"):
            a, b = getattr(resident, name), getattr(paged, name)
            assert a.dtype == b.dtype and np.array_equal(a, b), name
        assert paged.arrays.paged and paged.arrays.bytes == paged.pageable_bytes()
        assert paged.index_bytes() == resident.index_bytes() - paged.pageable_bytes()
        assert resident.index_bytes() == resident.planned_index_bytes()
        assert list(tmp_path.iterdir()) == []  # unlinked when created
        assert [paged.doc_id(g) for g in (0, 599, 600, 999)] == [resident.doc_id(g) for g in (0, 599, 600, 999)]
    finally:
        resident.close()
        paged.close()


def test_a_budget_below_the_index_pages_it_and_answers_the_same(engine_store, engine_queries, tmp_path):
    with lodestore.Searcher(engine_store, memory_budget="auto") as whole:
        want = whole.search(engine_queries, k=10)
        subset = [h[0] for h in want[0][:3]]  # ids looked up in the id table
        want_subset = whole.search(engine_queries[0], k=10, subset=subset)
        index = whole.stats()["placement"]["index_bytes"]
        centroids = whole.corpus.centroids.nbytes + sum(a.nbytes for a in whole.corpus.centroids_i8)
    budget = index + (1 << 20) - 1  # a byte short of the index and the smallest row cache
    with lodestore.Searcher(engine_store, memory_budget=budget, index_dir=tmp_path) as paged:
        st = paged.stats()
        assert st["placement"]["name"] == "index-paged" and st["placement"]["index_paged"]
        assert st["placement"]["index_bytes"] < centroids + (64 << 10)  # centroids, deletion masks
        assert st["resident_bytes"] <= budget
        assert paged.search(engine_queries, k=10) == want
        assert paged.search(engine_queries[0], k=10, subset=subset) == want_subset
    with pytest.warns(UserWarning, match="below the .* bytes searching this store needs in RAM"):
        with lodestore.Searcher(engine_store, memory_budget=0, index_dir=tmp_path) as smallest:
            assert smallest.placement.name == "index-paged" and smallest.search(engine_queries, k=10) == want
    assert list(tmp_path.iterdir()) == []
