"""Bad input is refused with a ValueError that names the document, and nothing is committed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lodestore import store

DIM = 32


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of a store directory (but the lock file) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def good_docs(corpus, n=6):
    return list(corpus.ids[:n]), [d.copy() for d in corpus.docs[:n]]


@pytest.fixture(params=["empty store", "store with documents"])
def target(request, tmp_path, store_copy):
    """A writable store: freshly created (the add would train the codec) or holding documents."""
    if request.param == "empty store":
        path = tmp_path / "fresh"
        store.Store.create(path, dim=DIM, nbits=2, num_centroids=16).close()
    else:
        path = store_copy
    s = store.Store.open(path, writable=True)
    yield s
    s.close()


@pytest.fixture
def fresh_docs(clustered_corpus):
    return clustered_corpus(6, DIM, seed=21, prefix="new")


def _bad_row(doc, value):
    doc = doc.copy()
    doc[min(2, len(doc) - 1), 5] = value
    return doc


def _zero_row(doc):
    doc = doc.copy()
    doc[min(1, len(doc) - 1)] = 0
    return doc


BAD_DOCUMENTS = {
    # name: (make the bad document from a good one, words the message must contain)
    "wrong dim": (lambda d: np.ones((4, DIM + 1), np.float32), ["wrong dim", str(DIM + 1)]),
    "too few dims": (lambda d: d[:, : DIM // 2].copy(), ["wrong dim"]),
    "nan": (lambda d: _bad_row(d, np.nan), ["not finite"]),
    "+inf": (lambda d: _bad_row(d, np.inf), ["not finite"]),
    "-inf": (lambda d: _bad_row(d, -np.inf), ["not finite"]),
    "empty document": (lambda d: np.zeros((0, DIM), np.float32), ["empty document"]),
    "zero vector": (_zero_row, ["zero vector"]),
    "one-dimensional": (lambda d: d[0].copy(), ["expected a"]),
    "three-dimensional": (lambda d: d[None].copy(), ["expected a"]),
    "integer values": (lambda d: np.ones((3, DIM), np.int32), ["float"]),
    "float16 overflowing to inf": (lambda d: _bad_row(d.astype(np.float16), np.float16(np.inf)), ["not finite"]),
}


@pytest.mark.parametrize("case", list(BAD_DOCUMENTS))
def test_bad_document_names_it_and_commits_nothing(target, fresh_docs, case):
    make_bad, words = BAD_DOCUMENTS[case]
    ids, docs = good_docs(fresh_docs)
    ids[3] = "the-bad-one"
    docs[3] = make_bad(docs[3])
    before, generation = snapshot(target.root), target.generation
    with pytest.raises(ValueError) as info:
        target.add(ids, docs)
    message = str(info.value)
    assert "'the-bad-one'" in message, message
    for word in words:
        assert word in message, message
    assert_nothing_committed(target, before, generation)


def assert_nothing_committed(s: store.Store, before: dict[str, bytes], generation: int) -> None:
    assert snapshot(s.root) == before
    assert s.generation == generation
    with store.Store.open(s.root) as again:
        assert again.generation == generation
        assert not any(i.startswith("new") for i in again.ids())


BAD_IDS = {
    # name: (change the id list, words the message must contain)
    "duplicate id": (lambda ids: ids[:4] + [ids[1]] + ids[5:], ["duplicate", repr("new1")]),
    "empty id": (lambda ids: ids[:2] + [""] + ids[3:], ["empty document id"]),
    "non-str id (int)": (lambda ids: ids[:2] + [7] + ids[3:], ["7", "not a string"]),
    "non-str id (None)": (lambda ids: ids[:2] + [None] + ids[3:], ["None", "not a string"]),
    "non-str id (bytes)": (lambda ids: ids[:2] + [b"new2"] + ids[3:], ["b'new2'", "not a string"]),
    "fewer ids than documents": (lambda ids: ids[:-1], ["5 ids for 6 documents"]),
    "more ids than documents": (lambda ids: ids + ["extra"], ["7 ids for 6 documents"]),
    "one string for ids": (lambda ids: "new0", ["not one string"]),
}


@pytest.mark.parametrize("case", list(BAD_IDS))
def test_bad_ids_are_refused(target, fresh_docs, case):
    change, words = BAD_IDS[case]
    ids, docs = good_docs(fresh_docs)
    before, generation = snapshot(target.root), target.generation
    with pytest.raises(ValueError) as info:
        target.add(change(ids), docs)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert_nothing_committed(target, before, generation)


def test_id_already_in_the_store(store_copy, template_corpus, fresh_docs):
    taken = template_corpus.ids[30]
    with store.Store.open(store_copy, writable=True) as s:
        ids, docs = good_docs(fresh_docs)
        ids[4] = taken
        before = snapshot(s.root)
        with pytest.raises(ValueError, match=f"'{taken}' is already in the store"):
            s.add(ids, docs)
        assert_nothing_committed(s, before, 2)
        with store.Store.open(store_copy) as reader:
            np.testing.assert_array_equal(s.get(taken), reader.get(taken))


@pytest.mark.parametrize(
    "embeddings, words",
    [
        (lambda docs: np.concatenate(docs), r"one \(n_tokens, dim\) matrix per document"),
        (lambda docs: [], "no documents"),
    ],
)
def test_embeddings_container_is_checked(target, fresh_docs, embeddings, words):
    ids, docs = good_docs(fresh_docs)
    before, generation = snapshot(target.root), target.generation
    with pytest.raises(ValueError, match=words):
        target.add(ids if docs else [], embeddings(docs))
    assert_nothing_committed(target, before, generation)


def test_a_failed_add_leaves_the_store_usable(target, fresh_docs):
    ids, docs = good_docs(fresh_docs)
    bad = [d.copy() for d in docs]
    bad[-1][0, 0] = np.nan
    with pytest.raises(ValueError):
        target.add(ids, bad)
    generation = target.generation
    assert target.add(ids, docs) == generation + 1
    assert target.ids()[-len(ids) :] == ids
    assert target.verify().ok


# --------------------------------------------------------------------------- bundles


def write_bundle(path: Path, tokens: np.ndarray, doclens, ids=None) -> Path:
    path.mkdir()
    np.save(path / "docs.npy", tokens)
    np.save(path / "doclens.npy", np.asarray(doclens, dtype=np.int64))
    if ids is not None:
        (path / "ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return path


@pytest.mark.parametrize("value, words", [(np.nan, "not finite"), (np.inf, "not finite"), (0.0, "zero vector")])
def test_bad_row_in_a_bundle_names_the_document(target, fresh_docs, tmp_path, value, words):
    """Bundles are checked batch by batch while the segment is written: the half-written
    segment (and a codec trained by this add) must disappear."""
    tokens, doclens = fresh_docs.tokens.copy(), fresh_docs.doclens
    offsets = np.concatenate([[0], np.cumsum(doclens)])
    bad_doc = 4
    if value == 0.0:
        tokens[offsets[bad_doc] + doclens[bad_doc] - 1] = 0
    else:
        tokens[offsets[bad_doc] + doclens[bad_doc] - 1, 3] = value
    bundle = write_bundle(tmp_path / "bundle", tokens, doclens, fresh_docs.ids)
    before, generation = snapshot(target.root), target.generation
    with pytest.raises(ValueError) as info:
        target.add_embeddings(bundle, progress=False)
    assert f"'{fresh_docs.ids[bad_doc]}'" in str(info.value) and words in str(info.value), str(info.value)
    assert f"token {doclens[bad_doc] - 1} " in str(info.value)  # the token's place in its document
    assert_nothing_committed(target, before, generation)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda t, l, i: (t[:, :-8], l, i), "dim"),
        (lambda t, l, i: (t, np.append(l[:-1], l[-1] + 1), i), "doclens sum to"),
        (lambda t, l, i: (t, np.append(l[:-1], [0, l[-1]]), i + ["x"]), "empty document"),
        (lambda t, l, i: (t, l, i[:-1]), "ids for"),
        (lambda t, l, i: (t, l, i[:-1] + [i[0]]), "duplicate"),
        (lambda t, l, i: (t, l, i[:-1] + [""]), "empty document id"),
    ],
)
def test_malformed_bundle_is_refused(target, fresh_docs, tmp_path, change, words):
    tokens, doclens, ids = change(fresh_docs.tokens, fresh_docs.doclens, list(fresh_docs.ids))
    bundle = write_bundle(tmp_path / "bundle", tokens, doclens, ids)
    before, generation = snapshot(target.root), target.generation
    with pytest.raises(ValueError, match=words):
        target.add_embeddings(bundle, progress=False)
    assert_nothing_committed(target, before, generation)


def test_not_a_bundle_nor_npy_directory(target, tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="no .npy files"):
        target.add_embeddings(tmp_path / "nothing", progress=False)


# --------------------------------------------------------------------------- create


def test_create_refuses_a_non_empty_directory(tmp_path):
    path = tmp_path / "busy"
    path.mkdir()
    (path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        store.Store.create(path, dim=16)
    assert sorted(p.name for p in path.iterdir()) == ["precious.txt"]
    assert (path / "precious.txt").read_text() == "keep me"


def test_create_refuses_an_existing_store(template_store):
    before = snapshot(template_store)
    with pytest.raises(FileExistsError):
        store.Store.create(template_store, dim=32)
    assert snapshot(template_store) == before


def test_create_refuses_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        store.Store.create(tmp_path / "file", dim=16)


def test_create_in_an_empty_directory_and_below_missing_parents(tmp_path):
    (tmp_path / "empty").mkdir()
    store.Store.create(tmp_path / "empty", dim=16).close()
    store.Store.create(tmp_path / "a" / "b" / "c", dim=16).close()
    assert store.Store.open(tmp_path / "a" / "b" / "c").stats()["documents"] == 0


@pytest.mark.parametrize("nbits", [0, 3, 5, 8, -2])
def test_unsupported_nbits_rejected(tmp_path, nbits):
    with pytest.raises(ValueError, match="nbits must be one of"):
        store.Store.create(tmp_path / "s", dim=32, nbits=nbits)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("k", [0, -1, 65537])
def test_bad_num_centroids_rejected(tmp_path, k):
    with pytest.raises(ValueError, match="num_centroids"):
        store.Store.create(tmp_path / "s", dim=32, num_centroids=k)
    assert not (tmp_path / "s").exists()


def test_open_something_that_is_not_a_store(tmp_path):
    with pytest.raises(store.StoreError, match="no such store"):
        store.Store.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(store.StoreError, match="not a lodestore store"):
        store.Store.open(tmp_path / "plain")
