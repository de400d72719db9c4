"""The cut before centroid interaction (Searcher(prefilter=), engine/_probe.py): when the probed lists hold
more candidates than it allows per survivor, the best by centroid interaction over their probed centroids
only go on."""

from __future__ import annotations

import numpy as np
import pytest

import lodestore
from lodestore.engine import _pairs
from lodestore.engine._settings import CUT_CANDIDATES, default_prefilter
from lodestore.engine._args import normalize_query


@pytest.mark.parametrize("block", [64, 1 << 16])
def test_probed_pairs_by_doc_are_the_probed_pairs_sorted(engine_store, monkeypatch, block):
    monkeypatch.setattr(_pairs, "IVF_BLOCK", block)
    with lodestore.Searcher(engine_store) as s:
        c = s.corpus
        rng = np.random.default_rng(2)
        for _ in range(10):
            cents = np.unique(rng.integers(0, c.codec.num_centroids, size=rng.integers(1, 40)))
            docs, owners = c.probed_pairs_by_doc(cents)
            want_docs, want_owners = c.probed_docs(cents, with_centroids=True)
            want = sorted(zip(want_docs.tolist(), want_owners.tolist()))
            assert list(zip(docs.tolist(), owners.tolist())) == want


def _by_hand(s, query, survivors: int, keep: int) -> list[int]:
    """The survivors, computed the slow way: every probed candidate's bound over its probed centroids,
    the best `keep` of them (ties: lower document), then full centroid interaction (ties: lower document)."""
    c = s.corpus
    table, _, probed = s.prober.score_and_probe(normalize_query(query), s.settings)
    table = table.astype(np.int64)
    probed = set(np.unique(probed).tolist())
    docs, owners = c.probed_docs(np.array(sorted(probed)), with_centroids=True)
    mine: dict[int, set[int]] = {}
    for d, o in zip(docs.tolist(), owners.tolist()):
        mine.setdefault(d, set()).add(o)
    bound = {d: int(table[sorted(cs)].max(axis=0).sum()) for d, cs in mine.items()}
    cut = sorted(bound, key=lambda d: (-bound[d], d))[:keep]
    full = {}
    for d in cut:
        ids = c.doc_codes[c.doc_code_offsets[d] : c.doc_code_offsets[d + 1]]
        full[d] = int(table[ids].max(axis=0).sum())
    return sorted(full, key=lambda d: (-full[d], d))[:survivors]


def test_the_cut_keeps_the_best_by_their_probed_centroids(engine_store, engine_queries):
    with lodestore.Searcher(engine_store, ndocs=30, prefilter=1) as s:
        for query in engine_queries[:6]:
            table, _, probed = s.prober.score_and_probe(normalize_query(query), s.settings)
            got, _ = s.prober.candidates(table, probed, 10, None, s.settings)
            n_candidates = len(np.unique(s.corpus.probed_docs(np.unique(probed))))
            assert n_candidates > 30  # the cut is in play
            assert got.tolist() == _by_hand(s, query, 30, 30)


def test_search_with_the_cut_keeps_its_recall(engine_store, engine_queries, recall):
    with lodestore.Searcher(engine_store, ndocs=40, prefilter=None) as s:
        want = s.search(engine_queries, k=10)
    with lodestore.Searcher(engine_store, ndocs=40, prefilter=4) as s:
        got = s.search(engine_queries, k=10)
    assert np.mean([recall(g, w) for g, w in zip(got, want)]) >= 0.95


def test_no_cut_and_a_cut_wider_than_the_candidates_give_the_same_answers(engine_store, engine_queries):
    with lodestore.Searcher(engine_store, ndocs=30, prefilter=None) as s:
        assert s.settings.prefilter is None
        want = s.search(engine_queries, k=10)
    with lodestore.Searcher(engine_store, ndocs=30) as s:
        assert s.settings.prefilter == default_prefilter(30) and s.settings.prefilter * 30 >= CUT_CANDIDATES
        assert s.search(engine_queries, k=10) == want  # 32,768 candidates is more than this store's documents
    with lodestore.Searcher(engine_store, ndocs=30, prefilter=1) as s:
        assert s.search(engine_queries, k=10) != want  # the cut is in play: the test can fail


@pytest.mark.parametrize("bad", [0, -3, 2.5, "none", True])
def test_a_bad_prefilter_is_refused_before_opening(engine_store, bad):
    with pytest.raises(ValueError, match="prefilter must be"):
        lodestore.Searcher(engine_store, prefilter=bad)


def test_set_search_options_keeps_an_auto_cut_at_its_total(engine_store, engine_queries):
    """ndocs changed for a sweep: an "auto" cut follows it (CUT_CANDIDATES in all, not the old count per
    survivor); a cut the caller fixed stays; a new prefilter is checked and taken."""
    with lodestore.Searcher(engine_store, ndocs=30) as s:
        s.set_search_options(ndocs=512)
        assert s.settings.prefilter == default_prefilter(512) and s.ndocs == 512
        s.set_search_options(prefilter=3)
        assert s.settings.prefilter == 3
        s.set_search_options(ndocs=64)
        assert s.settings.prefilter == 3  # fixed by the caller: kept
        s.set_search_options(prefilter="auto")
        assert s.settings.prefilter == default_prefilter(64)
        s.set_search_options(prefilter=None)
        assert s.settings.prefilter is None
        with pytest.raises(ValueError, match="prefilter must be"):
            s.set_search_options(prefilter=0)
        assert s.settings.prefilter is None  # nothing changed by a refused call
        s.search(engine_queries[0], k=10)
    with lodestore.Searcher(engine_store, ndocs=30, prefilter=2) as s:
        s.set_search_options(ndocs=90)
        assert s.settings.prefilter == 2
