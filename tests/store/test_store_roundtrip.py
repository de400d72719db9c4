"""A store gives back what was put in: ids, order, tokens (within the codec's cosine bound)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lodestore import store
from lodestore.store import StoreError

# Tiny corpora on purpose: the warning that a small first add fixes K is tested in tests/test_lifecycle.py.
pytestmark = pytest.mark.filterwarnings("ignore:the first add has only")

HEAVY = max(3, settings().max_examples // 10)

# nbits=2 bounds from tests/store/test_codec.py (COSINE_BOUNDS), with K well above the
# corpus's cluster count: every document's mean token cosine, and every single token.
DOC_MEAN_COS, TOKEN_COS = 0.90, 0.50


def expected_tokens(s: store.Store, doc: np.ndarray) -> np.ndarray:
    """What the store must return for `doc`: the codec's reconstruction of its unit rows."""
    x = np.asarray(doc, dtype=np.float64)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return s.codec.decode(*s.codec.encode(x))


def assert_same_reconstruction(got: np.ndarray, want: np.ndarray) -> None:
    """Same codes and residual buckets as the codec's own encoding.

    Not bit-equal floats: the final re-normalization sums in an order that depends
    on memory alignment (last-bit differences, ~1e-6). One flipped bucket or code
    moves a value by >= 1e-3, far outside this tolerance.
    """
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def assert_round_trip(s: store.Store, ids, docs, row_cosines) -> None:
    assert s.ids() == list(ids)
    assert len(s) == len(ids)
    for doc_id, doc in zip(ids, docs):
        assert doc_id in s
        got = s.get(doc_id)
        assert got.dtype == np.float32 and got.shape == np.shape(doc)
        cos = row_cosines(got, np.asarray(doc, dtype=np.float64))
        assert cos.mean() >= DOC_MEAN_COS, f"{doc_id}: mean cosine {cos.mean():.4f}"
        assert cos.min() >= TOKEN_COS, f"{doc_id}: worst token cosine {cos.min():.4f}"
        # bit-exact: the store holds exactly the codec's encoding of the input
        assert_same_reconstruction(got, expected_tokens(s, doc))


# --------------------------------------------------------------------------- round trips


def test_template_store_round_trip(template_store, template_corpus, row_cosines):
    with store.Store.open(template_store) as s:
        assert s.generation == 2
        assert len(s.segments) == 2
        assert_round_trip(s, template_corpus.ids, template_corpus.docs, row_cosines)


def test_reopen_after_close_gives_the_same_documents(template_store, template_corpus):
    s = store.Store.open(template_store)
    first = {i: s.get(i) for i in template_corpus.ids}
    s.close()
    s.close()  # idempotent
    with store.Store.open(template_store) as again:
        for i, tokens in first.items():
            np.testing.assert_array_equal(again.get(i), tokens)


def test_writer_handle_reads_back_its_own_adds(tmp_path, clustered_corpus, row_cosines):
    corpus = clustered_corpus(30, 16, seed=4, n_clusters=6, mean_len=12)
    with store.Store.create(tmp_path / "s", dim=16, nbits=2, num_centroids=32) as s:
        generations = [s.add(corpus.ids[a:b], corpus.docs[a:b]) for a, b in ((0, 10), (10, 11), (11, 30))]
        assert generations == [1, 2, 3]
        assert s.stats()["segments"] == 3
        assert_round_trip(s, corpus.ids, corpus.docs, row_cosines)
    with store.Store.open(tmp_path / "s") as s:
        assert [seg.n_docs for seg in s.segments] == [10, 1, 19]
        assert_round_trip(s, corpus.ids, corpus.docs, row_cosines)


@settings(max_examples=HEAVY)
@given(
    seed=st.integers(0, 10_000),
    n_docs=st.integers(1, 25),
    splits=st.lists(st.integers(1, 24), max_size=2),
    dim=st.sampled_from([16, 32]),
    nbits=st.sampled_from([1, 2, 4]),
)
def test_round_trip_property(tmp_path_factory, clustered_corpus, seed, n_docs, splits, dim, nbits):
    """Any corpus, added in any number of commits: ids, order and exact codec output come back."""
    corpus = clustered_corpus(n_docs, dim, seed=seed, n_clusters=4, mean_len=8, min_len=1, max_len=20)
    cuts = sorted({c for c in splits if c < n_docs})
    bounds = list(zip([0] + cuts, cuts + [n_docs]))
    path = tmp_path_factory.mktemp("prop") / "s"
    with store.Store.create(path, dim=dim, nbits=nbits, num_centroids=16, seed=seed) as s:
        for a, b in bounds:
            s.add(corpus.ids[a:b], corpus.docs[a:b])
    with store.Store.open(path) as s:
        assert s.generation == len(bounds) == s.stats()["segments"]
        assert s.ids() == corpus.ids
        for i, doc in zip(corpus.ids, corpus.docs):
            assert_same_reconstruction(s.get(i), expected_tokens(s, doc))
        assert s.verify().ok


def test_one_document_of_one_token(tmp_path, clustered_corpus):
    doc = clustered_corpus(1, 16, seed=0, mean_len=1, min_len=1, max_len=1).docs[0]
    with store.Store.create(tmp_path / "s", dim=16, nbits=2) as s:
        s.add(["only"], [doc])
    with store.Store.open(tmp_path / "s") as s:
        assert s.stats()["tokens"] == 1 and s.stats()["centroids"] == 1
        np.testing.assert_allclose(s.get("only"), doc, atol=1e-3)  # one centroid: the token itself
        assert s.verify().ok


def test_unicode_ids_keep_their_order(tmp_path, clustered_corpus):
    corpus = clustered_corpus(6, 16, seed=1)
    ids = ["é", "文档", "a b", "0", "emoji-🙂", "x" * 300]
    with store.Store.create(tmp_path / "s", dim=16, nbits=2, num_centroids=16) as s:
        s.add(ids, corpus.docs)
    with store.Store.open(tmp_path / "s") as s:
        assert s.ids() == ids
        assert s.get("文档").shape == corpus.docs[1].shape


# --------------------------------------------------------------------------- input types


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_numpy_dtypes(tmp_path, clustered_corpus, row_cosines, dtype):
    corpus = clustered_corpus(12, 32, seed=2)
    docs = [d.astype(dtype) for d in corpus.docs]
    with store.Store.create(tmp_path / "s", dim=32, nbits=2, num_centroids=16) as s:
        s.add(corpus.ids, docs)
        assert_round_trip(s, corpus.ids, docs, row_cosines)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_torch_tensors(tmp_path, clustered_corpus, row_cosines, dtype):
    torch = pytest.importorskip("torch")
    corpus = clustered_corpus(12, 32, seed=2)
    tensors = [torch.from_numpy(d).to(getattr(torch, dtype)) for d in corpus.docs]
    tensors[0].requires_grad_(True)  # the store detaches
    with store.Store.create(tmp_path / "s", dim=32, nbits=2, num_centroids=16) as s:
        s.add(corpus.ids, tensors)
        as_float = [t.detach().float().numpy() for t in tensors]
        assert_round_trip(s, corpus.ids, as_float, row_cosines)


@settings(max_examples=HEAVY)
@given(
    exponent=st.sampled_from([-30, -25, -20, -10, -1, 0, 1, 5, 10, 15, 20, 25, 30]),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_rows_are_normalized_whatever_their_scale(tmp_path_factory, clustered_corpus, row_cosines, exponent, dtype):
    """A document scaled by 10^e (finite, nonzero) is stored as the unscaled one is.

    float32 rows beyond ~1.8e19 or below ~1e-19 overflow or underflow a float32 sum of
    squares: the store must still normalize them, not store zeros or call them empty.
    """
    corpus = clustered_corpus(8, 16, seed=7)
    scaled = (corpus.docs[0].astype(np.float64) * 10.0**exponent).astype(dtype)
    assert np.isfinite(scaled).all() and (np.abs(scaled).max(axis=1) > 0).all()
    path = tmp_path_factory.mktemp("scale") / "s"
    with store.Store.create(path, dim=16, nbits=2, num_centroids=16) as s:
        s.add(corpus.ids + ["scaled"], corpus.docs + [scaled])
        got, reference = s.get("scaled"), s.get(corpus.ids[0])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert row_cosines(got, reference).min() >= 0.98


@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_extreme_float32_scales(tmp_path, clustered_corpus, row_cosines, scale):
    """The examples that found the float32 norm overflow/underflow, pinned."""
    corpus = clustered_corpus(8, 16, seed=7)
    scaled = (corpus.docs[0].astype(np.float64) * scale).astype(np.float32)
    with store.Store.create(tmp_path / "s", dim=16, nbits=2, num_centroids=16) as s:
        s.add(corpus.ids + ["scaled"], corpus.docs + [scaled])
        assert row_cosines(s.get("scaled"), s.get(corpus.ids[0])).min() >= 0.98


@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_extreme_scales_in_a_bundle(tmp_path, clustered_corpus, row_cosines, scale):
    """The same for a bundle, whose training sample is normalized by its own code path."""
    corpus = clustered_corpus(20, 32, seed=5)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    np.save(bundle / "docs.npy", (corpus.tokens.astype(np.float64) * scale).astype(np.float32))
    np.save(bundle / "doclens.npy", corpus.doclens)
    with store.Store.create(tmp_path / "s", dim=32, nbits=2, num_centroids=16) as s:
        s.add_embeddings(bundle, progress=False)
        assert_round_trip(s, [str(i) for i in range(len(corpus))], corpus.docs, row_cosines)


# --------------------------------------------------------------------------- stats


def test_stats_fields(template_store, template_corpus):
    with store.Store.open(template_store) as s:
        st_ = s.stats()
    tokens = int(template_corpus.doclens.sum())
    assert st_["documents"] == len(template_corpus)
    assert st_["tokens"] == tokens
    assert st_["segments"] == 2
    assert st_["dim"] == 32 and st_["nbits"] == 2 and st_["centroids"] == 32
    assert st_["deleted"] == 0
    assert st_["generation"] == 2
    assert st_["format_version"] == store.FORMAT_VERSION
    du = sum(p.stat().st_size for p in template_store.rglob("*") if p.is_file())
    assert st_["bytes_on_disk"] == du
    assert st_["bytes_per_token"] == pytest.approx(du / tokens)
    arrays = st_["array_bytes"]
    assert {"codes", "residuals", "doc_offsets", "ivf_offsets", "ivf_docs", "id_offsets", "id_bytes", "codec"} <= set(arrays)
    # residuals: at least 8 bytes a token (32 dims x 2 bits) plus a 4-byte CRC per inner chunk
    assert arrays["residuals"] >= tokens * 8
    assert 0 < st_["token_bytes_per_token"] <= st_["bytes_per_token"]


def test_stats_of_an_empty_store(tmp_path):
    with store.Store.create(tmp_path / "s", dim=16, nbits=4) as s:
        st_ = s.stats()
        assert (st_["documents"], st_["tokens"], st_["segments"], st_["centroids"]) == (0, 0, 0, 0)
        assert st_["bytes_per_token"] == 0.0 and st_["dim"] == 16 and st_["nbits"] == 4
        assert s.ids() == [] and len(s) == 0
        with pytest.raises(KeyError):
            s.get("x")
        with pytest.raises(StoreError, match="no codec"):
            s.codec
        assert s.verify().ok


# --------------------------------------------------------------------------- bundles and .npy dirs


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("with_ids", [True, False])
def test_add_embeddings_from_a_bundle(tmp_path, clustered_corpus, row_cosines, dtype, with_ids):
    corpus = clustered_corpus(20, 32, seed=5)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    np.save(bundle / "docs.npy", corpus.tokens.astype(dtype))
    np.save(bundle / "doclens.npy", corpus.doclens)
    ids = [f"b-{i}" for i in range(len(corpus))] if with_ids else [str(i) for i in range(len(corpus))]
    if with_ids:
        (bundle / "ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    with store.Store.create(tmp_path / "s", dim=32, nbits=2, num_centroids=16) as s:
        assert s.add_embeddings(bundle, progress=False) == 1
    with store.Store.open(tmp_path / "s") as s:
        assert_round_trip(s, ids, [d.astype(dtype) for d in corpus.docs], row_cosines)


def test_bundle_is_streamed_in_batches(tmp_path, clustered_corpus, row_cosines, monkeypatch):
    """Bundles larger than one encode batch still land whole and in order."""
    import lodestore.store._ingest as ingest
    from lodestore.store._segment import SegmentWriter

    monkeypatch.setattr(ingest, "BATCH_TOKENS", 37)
    calls = []
    append = SegmentWriter.append
    monkeypatch.setattr(SegmentWriter, "append", lambda self, ids, *a: (calls.append(list(ids)), append(self, ids, *a)))
    corpus = clustered_corpus(25, 16, seed=6, mean_len=20)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    np.save(bundle / "docs.npy", corpus.tokens)
    np.save(bundle / "doclens.npy", corpus.doclens)
    with store.Store.create(tmp_path / "s", dim=16, nbits=2, num_centroids=16) as s:
        s.add_embeddings(bundle, progress=False)
        ids = [str(i) for i in range(len(corpus))]
        assert len(calls) > 5 and sum(calls, []) == ids
        assert_round_trip(s, ids, corpus.docs, row_cosines)


def test_add_embeddings_from_npy_files(tmp_path, clustered_corpus, row_cosines):
    corpus = clustered_corpus(9, 16, seed=8)
    folder = tmp_path / "npy"
    folder.mkdir()
    names = [f"doc-{i:02d}" for i in range(len(corpus))]
    for name, doc in zip(names, corpus.docs):
        np.save(folder / f"{name}.npy", doc)
    (folder / "README.txt").write_text("not a document")
    with store.Store.create(tmp_path / "s", dim=16, nbits=2, num_centroids=16) as s:
        s.add_embeddings(folder, progress=False)
        assert_round_trip(s, names, corpus.docs, row_cosines)


def test_add_embeddings_then_add_more(tmp_path, clustered_corpus):
    corpus = clustered_corpus(10, 16, seed=8)
    folder = tmp_path / "npy"
    folder.mkdir()
    for i, doc in zip(corpus.ids[:5], corpus.docs[:5]):
        np.save(folder / f"{i}.npy", doc)
    with store.Store.create(tmp_path / "s", dim=16, nbits=2, num_centroids=16) as s:
        s.add_embeddings(folder, progress=False)
        s.add(corpus.ids[5:], corpus.docs[5:])
        assert sorted(s.ids()) == sorted(corpus.ids)
        with pytest.raises(ValueError, match="already in the store"):
            s.add_embeddings(folder, progress=False)
        assert s.generation == 2


# --------------------------------------------------------------------------- deletes


def test_delete_then_get_raises(store_copy, template_corpus):
    gone = [template_corpus.ids[1], template_corpus.ids[30]]  # one in each segment
    with store.Store.open(store_copy, writable=True) as s:
        assert s.delete(gone) == 3
        for i in gone:
            with pytest.raises(KeyError, match=i):
                s.get(i)
            assert i not in s
        assert s.stats()["deleted"] == 2
        assert s.stats()["documents"] == len(template_corpus) - 2
    with store.Store.open(store_copy) as s:
        assert s.ids() == [i for i in template_corpus.ids if i not in gone]
        assert len(s) == len(template_corpus) - 2
        st_ = s.stats()
        assert st_["deleted"] == 2 and st_["documents"] == len(template_corpus) - 2
        assert st_["tokens"] == int(template_corpus.doclens.sum())  # tokens stay until compaction
        for i in gone:
            with pytest.raises(KeyError):
                s.get(i)
        survivor = template_corpus.ids[2]
        assert s.get(survivor).shape == template_corpus.docs[2].shape
        assert s.verify().ok


def test_deletes_accumulate_and_ids_can_come_back(store_copy, template_corpus):
    ids, docs = template_corpus.ids, template_corpus.docs
    with store.Store.open(store_copy, writable=True) as s:
        s.delete([ids[0]])
        s.delete([ids[3], ids[4]])
        with pytest.raises(KeyError):
            s.delete([ids[0]])  # already deleted
        with pytest.raises(KeyError):
            s.delete(["never-there"])
        assert s.generation == 4
        s.add([ids[0]], [docs[0]])  # a deleted id may be added again
    with store.Store.open(store_copy) as s:
        assert s.stats()["deleted"] == 3
        assert s.ids() == [i for i in ids if i not in (ids[0], ids[3], ids[4])] + [ids[0]]
        assert_same_reconstruction(s.get(ids[0]), expected_tokens(s, docs[0]))
        assert s.verify().ok


# --------------------------------------------------------------------------- readers


def test_read_only_store_refuses_changes(template_store, template_corpus, tmp_path):
    before = (template_store / "manifest.json").read_bytes()
    with store.Store.open(template_store) as s:
        with pytest.raises(StoreError, match="read-only"):
            s.add(["new"], [template_corpus.docs[0]])
        with pytest.raises(StoreError, match="read-only"):
            s.delete([template_corpus.ids[0]])
        with pytest.raises(StoreError, match="read-only"):
            s.add_embeddings(tmp_path)
    assert (template_store / "manifest.json").read_bytes() == before


def test_reader_keeps_its_generation_while_a_writer_commits(store_copy, template_corpus, clustered_corpus):
    reader = store.Store.open(store_copy)
    extra = clustered_corpus(3, 32, seed=99, prefix="extra")
    with store.Store.open(store_copy, writable=True) as w:
        w.add(extra.ids, extra.docs)
    assert reader.generation == 2
    assert reader.ids() == template_corpus.ids
    assert "extra0" not in reader
    reader.close()
    with store.Store.open(store_copy) as fresh:
        assert fresh.ids() == template_corpus.ids + extra.ids


def test_old_reader_survives_delete_and_writer_reopen(store_copy, template_corpus):
    """Writers collect deletion bitmaps the current manifest no longer names, but not one
    that a reader opened at an older generation holds a lease on (FORMAT.md section 13)."""
    ids = template_corpus.ids
    with store.Store.open(store_copy, writable=True) as w:
        w.delete([ids[0]])
    reader = store.Store.open(store_copy)  # generation 3 names seg-000001.000003.del
    with store.Store.open(store_copy, writable=True) as w:
        w.delete([ids[1]])  # generation 4 names seg-000001.000004.del
    store.Store.open(store_copy, writable=True).close()
    bitmap = store_copy / "segments" / "seg-000001.000003.del"
    try:
        assert bitmap.exists()  # the reader's lease names it
        assert reader.ids() == ids[1:]
    finally:
        reader.close()
    store.Store.open(store_copy, writable=True).close()
    assert not bitmap.exists()  # collected once the reader let go


@settings(max_examples=100, deadline=None)
@given(lists=st.lists(st.lists(st.integers(0, 2**32 - 1), max_size=12).map(sorted), max_size=8))
def test_inverted_list_deltas_round_trip_up_to_2_32(lists):
    """delta_decode_lists (uint32 running sums that wrap) inverts delta_encode_lists for any ascending lists
    of document numbers below 2^32, empty lists included: the wrapped sums still give each value exactly."""
    from lodestore.store._segment import delta_decode_lists, delta_encode_lists

    counts = np.array([len(x) for x in lists], dtype=np.int64)
    docs = np.array([d for x in lists for d in x], dtype=np.uint32)
    got = delta_decode_lists(delta_encode_lists(docs, counts), counts)
    assert got.dtype == np.uint32 and np.array_equal(got, docs)


def test_codes_chunks_lie_on_page_boundaries(tmp_path):
    """The codes' inner chunks are 2,046 rows: with its CRC a chunk fills one 4 KiB page exactly, so every
    chunk starts on a page boundary (one device page a read, not two); shards of 32 chunks (65,472 rows);
    zarr-python reads the array as written (FORMAT.md 8.4)."""
    import json

    import zarr

    from lodestore.store._rawarray import RawShardedArray
    from lodestore.store._safefs import StorePath

    rng = np.random.default_rng(3)
    docs = [rng.standard_normal((int(rng.integers(20, 60)), 32)).astype(np.float32) for _ in range(2500)]
    path = tmp_path / "s"
    with store.Store.create(path, dim=32, nbits=2, num_centroids=16) as s:
        s.add([str(i) for i in range(len(docs))], docs)
    seg = next((path / "segments").glob("seg-*[0-9]"))
    meta = json.loads((seg / "codes" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [65472]
    assert meta["codecs"][0]["configuration"]["chunk_shape"] == [2046]
    codes = RawShardedArray(StorePath(seg / "codes"))
    assert codes.shape[0] > 65472  # two shards at least
    for shard in range(codes.n_shards):
        offsets = codes.shard_index(shard)[:, 0]
        present = offsets != np.uint64(2**64 - 1)
        assert (offsets[present] % 4096 == 0).all()
    np.testing.assert_array_equal(zarr.open_array(seg / "codes", mode="r")[:], codes.read_all())
    codes.close()
