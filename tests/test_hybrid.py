"""Hybrid keyword + MaxSim search: BM25 over the stored postings (or, for segments without them,
over postings derived from the stored text) equals bm25s' own scoring of the same live corpus
built from scratch, and stored postings score exactly as derived ones, through adds, deletes,
upserts, compaction, reopen and a writer killed mid-add; a corrupt postings chunk is found by
verify; a new process never tokenizes a segment that stores postings; search modes are
validated; fused results are deterministic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lodestore import Encoder, Index, Store, cli
from lodestore.hybrid import FUSION_DEPTH, RRF_K, fuse
from lodestore.keyword import KeywordIndex, document_keywords, tokenize, tokenizer_name, top_k
from lodestore.store import CorruptStoreError, Keywords

WORDS = ["cancer", "cells", "protein", "gene", "mouse", "brain", "heart", "insulin", "virus", "the", "of",
         "running", "runs", "runner"]
DOCS = {
    "a": "the cat sat on the mat",
    "b": "stock markets fell sharply today",
    "c": "quantum chromodynamics of gluons and quarks",
    "d": "cats and dogs living together on the mat",
    "e": "markets rallied as stock prices rose",
    "f": "gluons bind quarks inside protons",
}
QUERIES = ["cat on a mat", "stock markets", "quarks and gluons", "dogs", "nothing matches zzz"]


def reference_scores(texts: list[str], query: str) -> np.ndarray:
    """bm25s' own scores (method "lucene", its defaults) over `texts`, built from scratch."""
    import bm25s

    corpus = tokenize(texts)
    if not any(corpus):  # bm25s cannot index a corpus without a single term: nothing matches
        return np.zeros(len(texts), dtype=np.float32)
    retriever = bm25s.BM25(method="lucene")
    retriever.index(corpus, show_progress=False)
    q = [w for w in tokenize([query])[0] if w in retriever.vocab_dict]
    if not q:
        return np.zeros(len(texts), dtype=np.float32)
    return retriever.get_scores(q)


def check_against_reference(keyword: KeywordIndex, live: dict[str, str], queries: list[str]) -> None:
    keyword.refresh()
    assert sorted(keyword.ids) == sorted(live), "the keyword index holds exactly the live documents"
    texts = [live[i] for i in keyword.ids]
    for q in queries:
        np.testing.assert_allclose(keyword.scores(q), reference_scores(texts, q), rtol=2e-6, atol=1e-6)
    check_stored_equals_derived(keyword.store, queries)


def check_stored_equals_derived(store: Store, queries: list[str]) -> None:
    """Scores from the stored postings are bit for bit those derived from the text."""
    stored, derived = KeywordIndex(store), KeywordIndex(store, stored=False)
    stored.refresh()
    derived.refresh()
    assert stored.ids == derived.ids
    for q in queries:
        np.testing.assert_array_equal(stored.scores(q), derived.scores(q))


# ---------------------------------------------------------------- the keyword index over a plain Store
def _payload(text: str) -> bytes:
    return json.dumps({"title": "", "text": text, "metadata": {}}).encode()


def _vectors(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, 8)).astype(np.float32) for _ in range(n)]


def _keywords(texts: list[str], stored: bool) -> Keywords | None:
    """What an Index stores with these texts (stored=True), or nothing, as stores written before postings were."""
    return document_keywords([""] * len(texts), texts) if stored else None


ops = st.lists(st.tuples(st.sampled_from(["add", "upsert", "delete", "compact"]),
                         st.lists(st.lists(st.sampled_from(WORDS), min_size=0, max_size=8), min_size=1, max_size=4),
                         st.booleans()),
               min_size=1, max_size=5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, first_stored=st.booleans())
def test_bm25_equals_reference_through_adds_deletes_upserts_and_compaction(tmp_path_factory, ops,
                                                                           first_stored) -> None:
    """Segments with stored postings and segments without (derived from their text), mixed at random."""
    path = tmp_path_factory.mktemp("kw") / "store"
    live: dict[str, str] = {"s0": "cancer cells of the mouse", "s1": "insulin and the heart", "s2": "brain gene"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = Store.create(path, dim=8, num_centroids=2)
        store.add(list(live), _vectors(3, 0), payloads=[_payload(t) for t in live.values()],
                  keywords=_keywords(list(live.values()), first_stored))
    queries = ["cancer cells", "the heart of the mouse", "runner running", "gene gene brain"]
    keyword = KeywordIndex(store)
    counter = 3
    with store:
        check_against_reference(keyword, live, queries)
        for step, (op, docs, stored) in enumerate(ops):
            texts = [" ".join(words) for words in docs]
            if op == "add":
                ids = [f"s{counter + i}" for i in range(len(texts))]
                counter += len(texts)
                store.add(ids, _vectors(len(ids), step), payloads=[_payload(t) for t in texts],
                          keywords=_keywords(texts, stored))
                live.update(zip(ids, texts))
                assert store.segments[-1].keyword_tokenizer == (tokenizer_name() if stored else None)
            elif op == "upsert" and live:
                ids = sorted(live)[: len(texts)]
                store.add(ids, _vectors(len(ids), step), payloads=[_payload(t) for t in texts[: len(ids)]],
                          keywords=_keywords(texts[: len(ids)], stored), upsert=True)
                live.update(zip(ids, texts))
            elif op == "delete" and len(live) > 1:
                gone = sorted(live)[:: 2][: len(texts)]
                store.delete(gone)
                for i in gone:
                    del live[i]
            elif op == "compact":
                store.compact()
            check_against_reference(keyword, live, queries)
    with Store.open(path) as reopened:  # a new process-level index over the committed store
        check_against_reference(KeywordIndex(reopened), live, queries)


def _no_tokenizer(texts):
    raise AssertionError(f"tokenized {list(texts)[:3]}: stored postings should have been used")


def test_compaction_carries_postings_without_tokenizing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = {"a": "cancer cells cells", "b": "zebrafish gene", "c": "insulin heart", "d": "heart gene brain"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = Store.create(tmp_path / "s", dim=8, num_centroids=2)
    with store:
        for ids in (["a", "b"], ["c", "d"]):
            store.add(ids, _vectors(2, len(ids)), payloads=[_payload(texts[i]) for i in ids],
                      keywords=_keywords([texts[i] for i in ids], True))
        assert "keywords" in store.manifest.writer_features
        store.delete(["b"])
        monkeypatch.setattr("lodestore.keyword.tokenize", _no_tokenizer)
        store.compact()
        (seg,) = store.segments
        assert seg.keyword_tokenizer == tokenizer_name() and store.verify().ok
        kw = seg.keywords()
        assert "zebrafish" not in kw.words and kw.n == 3, "the deleted document's postings and terms are dropped"
        assert kw.lengths.tolist() == [3, 2, 3]
        keyword = KeywordIndex(store)
        keyword.refresh()
        monkeypatch.undo()
        live = {i: texts[i] for i in "acd"}
        check_against_reference(keyword, live, ["cells", "heart gene", "zebrafish"])


def test_compacting_a_segment_without_postings_leaves_them_to_be_derived(tmp_path: Path) -> None:
    texts = {"a": "cancer cells", "b": "insulin heart", "c": "heart gene"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = Store.create(tmp_path / "s", dim=8, num_centroids=2)
    with store:
        store.add(["a"], _vectors(1, 0), payloads=[_payload(texts["a"])])  # as written before postings were stored
        store.add(["b", "c"], _vectors(2, 1), payloads=[_payload(texts[i]) for i in "bc"],
                  keywords=_keywords([texts[i] for i in "bc"], True))
        store.compact()
        assert store.segments[0].keyword_tokenizer is None and store.verify().ok
        check_against_reference(KeywordIndex(store), texts, ["heart", "cancer gene"])


def test_bad_keywords_are_refused_with_nothing_written(tmp_path: Path) -> None:
    tok = tokenizer_name()
    for bad, match in ((lambda: Keywords.from_terms("two words", [["a"]]), "tokenizer name"),
                       (lambda: Keywords.from_terms(tok, ["cancer"]), "not a list of terms"),
                       (lambda: Keywords.from_terms(tok, "cancer"), "one list of terms per document"),
                       (lambda: Keywords.from_terms(tok, [["ok", ""]]), "not a non-empty string"),
                       (lambda: Keywords.from_terms(tok, [["ok", 3]]), "not a non-empty string"),
                       (lambda: Keywords.from_terms(tok, [["\ud800"]]), "not encodable as UTF-8")):
        with pytest.raises(ValueError, match=match):
            bad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = Store.create(tmp_path / "s", dim=8, num_centroids=2)
    with store:
        with pytest.raises(ValueError, match="keyword postings of 1 documents for 2 documents"):
            store.add(["a", "b"], _vectors(2, 0), keywords=_keywords(["cancer"], True))
        with pytest.raises(ValueError, match="keywords must be lodestore.store.Keywords"):
            store.add(["a"], _vectors(1, 0), keywords=[["cancer"]])
        assert store.generation == 0 and not list((tmp_path / "s" / "segments").iterdir())


def test_verify_names_a_corrupt_postings_chunk(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Store.create(tmp_path / "s", dim=8, num_centroids=2) as store:
            store.add(["a", "b"], _vectors(2, 0), payloads=[_payload("cancer cells"), _payload("heart")],
                      keywords=_keywords(["cancer cells", "heart"], True))
    chunk = tmp_path / "s" / "segments" / "seg-000001" / "keyword_tfs" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with Store.open(tmp_path / "s") as store:
        report = store.verify()
        assert not report.ok and any("keyword_tfs/c/0" in f for f in report.failures), report.failures
        with pytest.raises(CorruptStoreError, match="keyword_tfs/c/0: checksum mismatch"):
            KeywordIndex(store).refresh()


def test_top_k_breaks_ties_by_id_and_returns_only_matches() -> None:
    scores = np.array([0.5, 2.0, 0.5, 0.0, 0.5, 2.0], dtype=np.float32)
    ids = ["z", "y", "b", "q", "a", "c"]
    assert top_k(scores, ids, 3) == [("c", 2.0), ("y", 2.0), ("a", 0.5)]
    assert top_k(scores, ids, 10) == [("c", 2.0), ("y", 2.0), ("a", 0.5), ("b", 0.5), ("z", 0.5)]
    assert top_k(np.zeros(3, dtype=np.float32), ["a", "b", "c"], 2) == []


def test_fusions() -> None:
    maxsim = [("a", 30.0), ("b", 20.0), ("c", 10.0)]
    bm25 = [("c", 9.0), ("d", 5.0), ("b", 1.0)]
    rrf = dict(fuse([maxsim, bm25], 10, "rrf"))
    assert rrf["b"] == pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 3))
    assert rrf["d"] == pytest.approx(1 / (RRF_K + 2))
    score = fuse([maxsim, bm25], 10, "score")
    assert dict(score)["c"] == pytest.approx(0.5) and dict(score)["a"] == pytest.approx(0.5)
    assert [d for d, _ in score][:2] == ["a", "c"], "a tie is broken by id"
    assert dict(score)["b"] == pytest.approx(0.25 + 0.0)
    assert fuse([maxsim, []], 2, "score") == [("a", 0.5), ("b", 0.25)]


# ---------------------------------------------------------------- the Index's search modes
@pytest.fixture(scope="module")
def enc() -> Encoder:
    return Encoder.default(intra_op_num_threads=2)


def _build(path: Path, enc: Encoder, docs: dict[str, str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Index.create(path, enc, num_centroids=4) as index:
            index.add(list(docs), list(docs.values()))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, enc: Encoder) -> Path:
    path = tmp_path_factory.mktemp("hybrid") / "index"
    _build(path, enc, DOCS)
    return path


def test_modes_are_validated(built: Path, enc: Encoder) -> None:
    with Index.open(built, enc) as index:
        with pytest.raises(ValueError, match="unknown search mode 'dense'; expected one of 'maxsim', 'bm25', 'hybrid'"):
            index.search("cat", mode="dense")
        with pytest.raises(ValueError, match="unknown fusion 'max'; expected one of 'rrf', 'score'"):
            index.search("cat", mode="hybrid", fusion="max")
        with pytest.raises(ValueError, match="subset must be a collection"):
            index.search("cat", mode="bm25", subset="a")


def test_hybrid_is_deterministic_and_reopen_gives_the_same(built: Path, enc: Encoder) -> None:
    with Index.open(built, enc) as index:
        first = {(m, f): [(h.id, h.score) for h in index.search(QUERIES, k=4, mode=m, fusion=f)[0]]
                 for m in ("maxsim", "bm25", "hybrid") for f in ("rrf", "score")}
        again = {(m, f): [(h.id, h.score) for h in index.search(QUERIES, k=4, mode=m, fusion=f)[0]]
                 for m in ("maxsim", "bm25", "hybrid") for f in ("rrf", "score")}
        bm25_all = [[(h.id, h.score) for h in r] for r in index.search(QUERIES, k=4, mode="bm25")]
    assert first == again
    assert first[("bm25", "rrf")][0][0] == "a" and first[("hybrid", "rrf")][0][0] == "a"
    assert bm25_all[-1] == [], "a query with no known term matches nothing by keywords"
    with Index.open(built, enc) as index:  # the keyword index is derived again from the stored text
        assert [[(h.id, h.score) for h in r] for r in index.search(QUERIES, k=4, mode="bm25")] == bm25_all
        check_against_reference(index.keyword, DOCS, QUERIES)
        hybrid = index.search(QUERIES[0], k=4, mode="hybrid")
        assert [h.text for h in hybrid] == [DOCS[h.id] for h in hybrid], "hits carry their stored text"


def test_subset_applies_to_every_mode(built: Path, enc: Encoder) -> None:
    with Index.open(built, enc) as index:
        for mode in ("maxsim", "bm25", "hybrid"):
            hits = index.search("stock markets and quarks", k=5, mode=mode, subset=["b", "f"])
            assert hits and {h.id for h in hits} <= {"b", "f"}, mode
            with pytest.raises(ValueError, match=r"unknown document ids in subset: \['gone'\]"):
                index.search("stock", k=5, mode=mode, subset=["b", "gone"])


def test_hybrid_depth_reaches_past_k(built: Path, enc: Encoder) -> None:
    with Index.open(built, enc) as index:
        top1 = index.search("stock markets", k=1, mode="hybrid")
        top6 = index.search("stock markets", k=6, mode="hybrid")
    assert FUSION_DEPTH >= 6 and [top1[0].id] == [top6[0].id] and top1[0].score == top6[0].score


def test_index_updates_reach_the_keyword_index(tmp_path: Path, enc: Encoder) -> None:
    path = tmp_path / "index"
    _build(path, enc, dict(list(DOCS.items())[:3]))
    live = dict(list(DOCS.items())[:3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Index.open(path, enc, writable=True) as index:
            check_against_reference(index.keyword, live, QUERIES)
            index.add(["d", "e"], [DOCS["d"], DOCS["e"]])
            live.update(d=DOCS["d"], e=DOCS["e"])
            check_against_reference(index.keyword, live, QUERIES)
            index.add(["a"], ["dogs chase stock quarks"], upsert=True)
            live["a"] = "dogs chase stock quarks"
            index.delete(["b"])
            del live["b"]
            check_against_reference(index.keyword, live, QUERIES)
            index.store.compact()
            check_against_reference(index.keyword, live, QUERIES)
            assert index.search("dogs", k=3, mode="bm25")[0].id in {"a", "d"}


def test_an_index_written_before_postings_were_stored_still_searches(tmp_path: Path, enc: Encoder,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "index"
    first = dict(list(DOCS.items())[:3])
    with monkeypatch.context() as m:  # the add path of the code before postings were stored
        m.setattr("lodestore.index.document_keywords", lambda titles, texts: None)
        _build(path, enc, first)
    live = dict(first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Index.open(path, enc, writable=True) as index:
            assert index.store.segments[0].keyword_tokenizer is None
            assert "keywords" not in index.store.manifest.writer_features
            check_against_reference(index.keyword, live, QUERIES)
            index.add(["d", "e"], [DOCS["d"], DOCS["e"]])
            live.update(d=DOCS["d"], e=DOCS["e"])
            assert index.store.segments[-1].keyword_tokenizer == tokenizer_name()
            assert "keywords" in index.store.manifest.writer_features
            check_against_reference(index.keyword, live, QUERIES)
            index.store.compact()  # one source has no postings: the merged segment is derived again
            check_against_reference(index.keyword, live, QUERIES)
            assert [h.id for h in index.search("stock markets", k=2, mode="bm25")] == ["b", "e"]


def test_a_new_process_tokenizes_only_the_query(built: Path) -> None:
    code = textwrap.dedent(f"""
        import lodestore.keyword as kw
        real, calls = kw.tokenize, []
        def spy(texts):
            calls.append(list(texts))
            return real(texts)
        kw.tokenize = spy
        from lodestore import Index
        with Index.open({str(built)!r}) as index:
            assert all(s.keyword_tokenizer == kw.tokenizer_name() for s in index.store.segments)
            hits = index.ranked(["stock markets"], 2, mode="bm25")
        assert calls == [["stock markets"]], calls
        print([h for h, _ in hits[0]])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "['b', 'e']", proc.stderr


KILL_MID_ADD = textwrap.dedent("""
    import sys, warnings
    from lodestore import Index
    warnings.simplefilter("ignore")
    with Index.open(sys.argv[1], writable=True) as index:
        index.add(["e", "f"], [sys.argv[2], sys.argv[3]])
    print("finished")
""")


@pytest.mark.crash
@pytest.mark.parametrize("kill_at, after", [("add.segment_written", False), ("add.before_commit", False),
                                             ("commit.before_gc", True)])
def test_writer_killed_mid_add_leaves_before_or_after(tmp_path: Path, enc: Encoder, kill_at: str, after: bool) -> None:
    path = tmp_path / "index"
    before = {i: DOCS[i] for i in "abcd"}
    _build(path, enc, before)
    env = dict(os.environ, LODESTORE_FAILPOINT_KILL=kill_at)
    proc = subprocess.run([sys.executable, "-c", KILL_MID_ADD, str(path), DOCS["e"], DOCS["f"]], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9 and "finished" not in proc.stdout, proc.stderr
    expected = {**before, "e": DOCS["e"], "f": DOCS["f"]} if after else before
    with Index.open(path, enc) as index:
        assert index.store.verify().ok
        assert len(index.store.segments) == (2 if after else 1)
        assert all(seg.keyword_tokenizer == tokenizer_name() for seg in index.store.segments), "postings committed"
        check_against_reference(index.keyword, expected, QUERIES)
        assert {h.id for h in index.search("stock markets", k=6, mode="bm25")} == {"b", "e"} & set(expected)


def test_cli_query_and_eval_modes(built: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["query", str(built), "stock markets", "-k", "2", "--mode", "bm25", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["id"] for h in hits] == ["b", "e"]
    with pytest.raises(SystemExit):
        cli.main(["query", str(built), "stock", "--mode", "dense"])
    assert "invalid choice: 'dense'" in capsys.readouterr().err


def test_importing_lodestore_and_a_maxsim_search_do_not_import_bm25s(built: Path) -> None:
    code = textwrap.dedent(f"""
        import sys, lodestore
        from lodestore import Index
        with Index.open({str(built)!r}) as index:
            index.search("cat", k=2, mode="maxsim")
        assert "bm25s" not in sys.modules and "Stemmer" not in sys.modules, "loaded"
        index = Index.open({str(built)!r})
        index.search("cat", k=2, mode="bm25")
        assert "bm25s" in sys.modules
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_bench_hybrid_runs(tmp_path: Path) -> None:
    from tools.bench_hybrid import RUNS, bench, table

    sample = Path(__file__).parent.parent / "tools" / "data" / "scifact-sample"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = bench(sample, tmp_path / "sample", threads=2, max_docs=24)
    assert row["docs"] == 24 and row["queries"] > 0 and row["terms"] > 0
    for name, _, _ in RUNS:
        assert 0 <= row[name]["nDCG@10"] <= 1 and 0 <= row[name]["R@100"] <= 1
    assert all(row[name]["k10_ms"] > 0 for name, _, _ in RUNS)
    assert "| scifact-sample | 24 |" in table([row]) and "ms at k=10" in table([row])
