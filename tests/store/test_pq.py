"""The pq codec (store/codecs/pq.py): properties of encode/decode, stores that use it, and its on-disk form.

FORMAT.md section 7.5 is checked here against what the writer produces: the codec
entry, the codec/ group's arrays (dtype, shape, byte order) and the row layout
(byte s of a residual row = code of subspace s).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lodestore import store
from lodestore.store import UnsupportedFormatError
from lodestore.store._manifest import MANIFEST_NAME, Manifest
from lodestore.store.codecs.pq import PQ_CODES, PQCodec

pytestmark = pytest.mark.filterwarnings("ignore:the first add has only")

HEAVY = max(3, settings().max_examples // 10)
# Round-trip bound for pq stores (FORMAT.md 7.6), on every document's mean token cosine and on
# every token. Measured on documents the codec was not trained on (clustered corpus, dim 64,
# K=32, 3 seeds): worst document mean 0.969 / worst token 0.899 at 16 subspaces (4 dims
# each); 0.995 / 0.956 at 32. Tiny corpora (fewer tokens than 256 codewords) come back
# almost exactly (worst document 0.99999), so the property test meets the bound easily.
PQ_DOC_MEAN_COS, PQ_TOKEN_COS = 0.95, 0.85


@pytest.fixture(scope="module")
def trained(clustered_corpus) -> tuple[PQCodec, np.ndarray]:
    """A pq codec (dim 64, 16 subspaces of 4 dims, K=32) and the unit tokens it was trained on."""
    corpus = clustered_corpus(120, 64, seed=5, n_clusters=12, mean_len=30, min_len=10, max_len=60)
    tokens = corpus.tokens
    return PQCodec.train(tokens, 16, num_centroids=32, seed=0), tokens


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 300))
def test_encode_and_decode_are_deterministic(trained, seed, n):
    codec, _ = trained
    x = _unit(np.random.default_rng(seed), n, codec.dim)
    codes, rows = codec.encode(x)
    codes2, rows2 = codec.encode(x.copy())
    np.testing.assert_array_equal(codes, codes2)
    np.testing.assert_array_equal(rows, rows2)
    assert codes.dtype == np.uint16 and rows.dtype == np.uint8 and rows.shape == (n, 16)
    np.testing.assert_array_equal(codec.decode(codes, rows), codec.decode(codes.copy(), rows.copy()))


@settings(max_examples=HEAVY)
@given(seed=st.integers(0, 1000))
def test_training_is_deterministic(clustered_corpus, seed):
    tokens = clustered_corpus(40, 32, seed=seed, n_clusters=4, mean_len=20).tokens
    a = PQCodec.train(tokens, 16, num_centroids=8, seed=seed)
    b = PQCodec.train(tokens.copy(), 16, num_centroids=8, seed=seed)
    assert a == b


@settings(max_examples=40)
@given(seed=st.integers(0, 2**31 - 1))
def test_decoding_a_codebook_entry_own_code_returns_it(trained, seed):
    """A residual that is a concatenation of codewords encodes to codes that decode to exactly it,
    and a vector built as centroid + such a residual decodes (unnormalized) to itself."""
    codec, _ = trained
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, PQ_CODES, size=(5, codec.subspaces))
    entries = np.stack([codec.codebooks[np.arange(codec.subspaces), p].ravel() for p in picks])  # (5, dim)
    rows = codec.encode_residuals(entries)
    np.testing.assert_array_equal(codec.decode_residuals(rows), entries)
    k = rng.integers(0, codec.num_centroids, size=5).astype(np.uint16)
    np.testing.assert_array_equal(codec.decode(k, picks.astype(np.uint8), normalize=False),
                                  codec.centroids[k] + entries)


def test_training_vectors_decode_close(trained, row_cosines):
    codec, tokens = trained
    cos = row_cosines(codec.decode(*codec.encode(tokens)), tokens)
    assert cos.mean() >= 0.98, cos.mean()


def test_row_layout_byte_s_is_the_code_of_subspace_s(trained):
    """FORMAT.md 7.5: byte s of a row is the nearest codeword (L2) of residual dimensions [s*dsub, (s+1)*dsub)."""
    codec, tokens = trained
    x = tokens[:50]
    codes, rows = codec.encode(x)
    r = x - codec.centroids[codes]
    dsub = codec.dim // codec.subspaces
    for s in range(codec.subspaces):
        d = ((r[:, None, s * dsub : (s + 1) * dsub] - codec.codebooks[s][None]) ** 2).sum(-1)  # (50, 256)
        chosen = d[np.arange(len(x)), rows[:, s]]
        np.testing.assert_allclose(chosen, d.min(axis=1), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- stores


@settings(max_examples=HEAVY)
@given(
    seed=st.integers(0, 10_000),
    n_docs=st.integers(1, 25),
    splits=st.lists(st.integers(1, 24), max_size=2),
    dim_m=st.sampled_from([(32, 16), (64, 16), (64, 32), (128, 64), (192, 96), (128, 128)]),
)
def test_pq_store_round_trips_every_document(tmp_path_factory, clustered_corpus, row_cosines, seed, n_docs, splits, dim_m):
    """Any corpus, in any number of commits: ids, order, the codec's exact output, and every document
    of the first add (the codec's training data) within the stated cosine bound. Later adds are held
    to the bound only when the first was representative (the next test): a codec trained on one
    document cannot reconstruct a second from another cluster, whatever its kind."""
    dim, m = dim_m
    corpus = clustered_corpus(n_docs, dim, seed=seed, n_clusters=4, mean_len=8, min_len=1, max_len=20)
    cuts = sorted({c for c in splits if c < n_docs})
    bounds = list(zip([0] + cuts, cuts + [n_docs]))
    path = tmp_path_factory.mktemp("pqprop") / "s"
    with store.Store.create(path, dim=dim, codec="pq", pq_subspaces=m, num_centroids=16, seed=seed) as s:
        for a, b in bounds:
            s.add(corpus.ids[a:b], corpus.docs[a:b])
    with store.Store.open(path) as s:
        assert isinstance(s.codec, PQCodec) and s.codec.subspaces == m
        assert s.ids() == corpus.ids
        for n, (i, doc) in enumerate(zip(corpus.ids, corpus.docs)):
            got = s.get(i)
            assert got.dtype == np.float32 and got.shape == doc.shape
            np.testing.assert_allclose(got, s.codec.decode(*s.codec.encode(doc)), rtol=0, atol=2e-5)
            if n < bounds[0][1]:
                cos = row_cosines(got, doc)
                assert cos.mean() >= PQ_DOC_MEAN_COS and cos.min() >= PQ_TOKEN_COS, i
        assert s.verify().ok


@pytest.mark.parametrize("m", [16, 32])
def test_pq_store_round_trips_unseen_documents_within_the_bound(tmp_path, clustered_corpus, row_cosines, m):
    """The second add's documents were not in the training sample: the bound is about them."""
    corpus = clustered_corpus(200, 64, seed=6, n_clusters=12, mean_len=30, min_len=10, max_len=60)
    with store.Store.create(tmp_path / "s", dim=64, codec="pq", pq_subspaces=m, num_centroids=32) as s:
        s.add(corpus.ids[:100], corpus.docs[:100])
        s.add(corpus.ids[100:], corpus.docs[100:])
    with store.Store.open(tmp_path / "s") as s:
        for i, doc in zip(corpus.ids, corpus.docs):
            cos = row_cosines(s.get(i), doc)
            assert cos.mean() >= PQ_DOC_MEAN_COS and cos.min() >= PQ_TOKEN_COS, (i, cos.mean(), cos.min())


def test_pq_store_manifest_and_codec_group(tmp_path, clustered_corpus):
    corpus = clustered_corpus(20, 64, seed=1, n_clusters=4, mean_len=10)
    path = tmp_path / "s"
    with store.Store.create(path, dim=64, codec="pq", pq_subspaces=32, num_centroids=8) as s:
        empty = json.loads((path / MANIFEST_NAME).read_text())
        assert empty["reader_features"] == ["codec-pq"] and empty["codec"] is None and empty["nbits"] == 0
        assert empty["settings"] == {"codec": "pq", "pq_subspaces": 32, "num_centroids": 8, "seed": 0}
        s.add(corpus.ids, corpus.docs)
        st_ = s.stats()
        assert st_["codec"] == "pq" and st_["pq_subspaces"] == 32 and st_["residual_bytes_per_token"] == 32
    doc = json.loads((path / MANIFEST_NAME).read_text())
    assert doc["codec"] == {"kind": "pq", "path": "codec", "dim": 64, "nbits": 0, "num_centroids": 8, "pq_subspaces": 32}
    assert doc["reader_features"] == ["codec-pq"] and doc["format_version"] == 1
    group = json.loads((path / "codec" / "zarr.json").read_text())["attributes"]
    assert group["kind"] == "pq" and group["pq_subspaces"] == 32 and group["pq_bits"] == 8
    cb_meta = json.loads((path / "codec" / "pq_codebooks" / "zarr.json").read_text())
    assert cb_meta["data_type"] == "float32" and cb_meta["shape"] == [32, 256, 2]
    assert cb_meta["codecs"][0] == {"name": "bytes", "configuration": {"endian": "little"}}
    assert [c["name"] for c in cb_meta["codecs"]] == ["bytes", "crc32c"]
    # the chunk file is the raw little-endian float32 values, then their CRC32C
    raw = (path / "codec" / "pq_codebooks" / "c" / "0" / "0" / "0").read_bytes()
    assert len(raw) == 32 * 256 * 2 * 4 + 4
    with store.Store.open(path) as s:
        np.testing.assert_array_equal(np.frombuffer(raw[:-4], dtype="<f4").reshape(32, 256, 2), s.codec.codebooks)
        cent = json.loads((path / "codec" / "centroids" / "zarr.json").read_text())
        assert cent["data_type"] == "float16" and cent["shape"] == [8, 64]
        res = json.loads((path / "segments" / "seg-000001" / "residuals" / "zarr.json").read_text())
        assert res["shape"] == [s.stats()["tokens"], 32] and res["data_type"] == "uint8"
        # row layout: the segment's residual rows are the codec's bytes, subspace s in byte s
        codes, rows, _, _ = s.segments[0].read_docs(np.arange(len(corpus)))
        want_codes, want_rows = s.codec.encode(corpus.tokens)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(codes, want_codes)


def test_scalar_stores_keep_the_v1_manifest(tmp_path):
    """A scalar store names no codec feature and no pq keys: exactly what format v1 writers wrote."""
    with store.Store.create(tmp_path / "s", dim=128, nbits=2):
        pass
    doc = json.loads((tmp_path / "s" / MANIFEST_NAME).read_text())
    assert doc["checksum"] == "crc32c:9323569b"  # FORMAT.md 5.2's empty store
    assert doc["reader_features"] == [] and doc["settings"] == {"num_centroids": None, "seed": 0}


@pytest.mark.parametrize("kwargs, message", [
    ({"codec": "opq"}, "codec must be one of"),
    ({"codec": "pq", "nbits": 2}, "nbits applies only to codec='scalar'"),
    ({"codec": "scalar", "pq_subspaces": 32}, "pq_subspaces applies only to codec='pq'"),
    ({"nbits": 2, "pq_subspaces": 32}, "pq_subspaces applies only to codec='pq'"),
    ({"codec": "pq", "pq_subspaces": 8}, "pq_subspaces must be one of"),
    ({"codec": "pq", "pq_subspaces": 24}, "pq_subspaces must be one of"),
    ({"codec": "pq", "pq_subspaces": 64, "dim": 96}, "dim must be divisible by pq_subspaces"),
    ({"codec": "pq", "dim": 40}, "needs dim divisible by one of"),
    ({"codec": "scalar", "nbits": 3}, "nbits must be one of"),
])
def test_invalid_codec_arguments_are_refused(tmp_path, kwargs, message):
    kwargs = {"dim": 128, **kwargs}
    with pytest.raises(ValueError, match=message):
        store.Store.create(tmp_path / "s", **kwargs)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("dim, m", [(128, 32), (384, 96), (768, 128), (256, 64), (64, 16), (32, 16), (16, 16)])
def test_default_pq_subspaces_fit_the_2bit_budget(tmp_path, dim, m):
    with store.Store.create(tmp_path / "s", dim=dim, codec="pq") as s:
        assert s.manifest.settings["pq_subspaces"] == m


def test_the_default_codec_is_pq_at_the_2bit_budget(tmp_path):
    """Store.create without codec arguments: pq, with dim/4 residual bytes where allowed (128 -> 32)."""
    with store.Store.create(tmp_path / "s", dim=128) as s:
        assert s.manifest.settings["codec"] == "pq" and s.manifest.settings["pq_subspaces"] == 32
        assert s.manifest.reader_features == ("codec-pq",)


@pytest.mark.parametrize("dim, codec", [(8, "scalar"), (16, "scalar"), (32, "scalar"), (40, "scalar"), (64, "pq"),
                                        (96, "pq"), (384, "pq")])
def test_small_dims_default_to_scalar(tmp_path, dim, codec):
    """Where pq cannot fit the 2-bit scalar budget (dim/4 bytes, at least 16) the default stays scalar."""
    with store.Store.create(tmp_path / "s", dim=dim) as s:
        assert s.manifest.settings.get("codec", "scalar") == codec


def test_codec_is_chosen_from_the_arguments(tmp_path):
    with store.Store.create(tmp_path / "a", dim=64, pq_subspaces=16) as s:
        assert s.manifest.settings["codec"] == "pq"
    with store.Store.create(tmp_path / "b", dim=64, nbits=4) as s:
        assert "codec" not in s.manifest.settings and s.nbits == 4


def _rewrite_manifest(root, edit) -> None:
    m = Manifest.from_bytes((root / MANIFEST_NAME).read_bytes())
    import google_crc32c

    body = m.body()
    edit(body)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    doc = dict(body, checksum=f"crc32c:{google_crc32c.value(canonical):08x}")
    (root / MANIFEST_NAME).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def pq_store(tmp_path, clustered_corpus):
    corpus = clustered_corpus(12, 32, seed=2, n_clusters=3, mean_len=8)
    path = tmp_path / "pq"
    with store.Store.create(path, dim=32, codec="pq", pq_subspaces=16, num_centroids=8) as s:
        s.add(corpus.ids, corpus.docs)
    return path


@pytest.mark.parametrize("writable", [False, True])
def test_unknown_codec_is_refused(pq_store, writable):
    _rewrite_manifest(pq_store, lambda b: b["codec"].update(kind="opq"))
    with pytest.raises(UnsupportedFormatError, match="codec 'opq'.*upgrade"):
        store.Store.open(pq_store, writable=writable)


def test_a_reader_without_pq_refuses_a_pq_store(pq_store, monkeypatch):
    """What a v1 reader that predates the pq codec does: the reader feature stops it, clearly."""
    import lodestore.store._manifest as manifest

    monkeypatch.setattr(manifest, "KNOWN_READER_FEATURES", frozenset())
    with pytest.raises(UnsupportedFormatError, match="codec-pq"):
        store.Store.open(pq_store)


@pytest.fixture
def wide_store(tmp_path, clustered_corpus):
    corpus = clustered_corpus(12, 192, seed=3, n_clusters=3, mean_len=8)
    path = tmp_path / "wide"
    with store.Store.create(path, dim=192, codec="pq", pq_subspaces=96, num_centroids=8) as s:
        assert s.manifest.reader_features == ("codec-pq", "codec-pq-wide")  # from generation 0
        s.add(corpus.ids, corpus.docs)
    return path


def test_a_reader_without_wide_pq_refuses_a_96_subspace_store(wide_store, monkeypatch):
    """What a reader that knows pq of 16-64 subspaces only does: refuses the store as unsupported,
    naming the feature, instead of calling its 96 subspaces corruption."""
    import lodestore.store._manifest as manifest

    with store.Store.open(wide_store) as s:
        assert s.codec.subspaces == 96 and s.stats()["residual_bytes_per_token"] == 96
    monkeypatch.setattr(manifest, "KNOWN_READER_FEATURES", frozenset({"codec-pq"}))
    with pytest.raises(UnsupportedFormatError, match="codec-pq-wide"):
        store.Store.open(wide_store)


@pytest.mark.parametrize("edit, message", [
    (lambda b: b.update(reader_features=["codec-pq"]), "codec-pq-wide' goes exactly with"),  # 96, no feature
    (lambda b: (b["codec"].update(pq_subspaces=64), b["settings"].update(pq_subspaces=64)),
     "codec-pq-wide' goes exactly with"),  # the feature with 64
    (lambda b: b.update(reader_features=["codec-pq-wide"]), "without 'codec-pq'"),  # wide without codec-pq
])
def test_wide_pq_feature_and_subspaces_disagreeing_are_corrupt(wide_store, edit, message):
    _rewrite_manifest(wide_store, edit)
    with pytest.raises(store.CorruptStoreError, match=message):
        store.Store.open(wide_store)


def test_pq_codec_group_disagreeing_with_the_manifest_is_corrupt(pq_store):
    _rewrite_manifest(pq_store, lambda b: b["codec"].update(pq_subspaces=32))
    with store.Store.open(pq_store) as s, pytest.raises(store.CorruptStoreError, match="disagree"):
        s.codec


def test_verify_checks_the_codebooks(pq_store):
    chunk = pq_store / "codec" / "pq_codebooks" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[10] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with store.Store.open(pq_store) as s:
        report = s.verify()
    assert not report.ok and "pq_codebooks" in str(report)


def test_format_worked_example(monkeypatch):
    """FORMAT.md 7.5's worked example (dim 4, m 2: m outside {16, 32, 64} only for its size)."""
    import lodestore.store.codecs.pq as pq

    monkeypatch.setattr(pq, "PQ_SUBSPACES_ALLOWED", (2,))
    codebooks = np.full((2, 256, 2), 10.0, dtype=np.float32)  # the codewords the example leaves out: far away
    codebooks[0, 0], codebooks[0, 1] = [0, 0], [-0.02, 0.2]
    codebooks[1, 0], codebooks[1, 1] = [0, 0], [-0.06, 0]
    codec = pq.PQCodec(np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float16), codebooks)
    codes, rows = codec.encode(np.array([[0.96, 0.2, -0.06, 0]], dtype=np.float32) / np.float32(np.linalg.norm([0.96, 0.2, -0.06, 0])))
    assert codes.tolist() == [0] and rows.tolist() == [[1, 1]]
    np.testing.assert_allclose(codec.decode(codes, rows)[0], [0.978045, 0.199601, -0.059880, 0], atol=1e-6)


@pytest.mark.parametrize("dim, m", [(96, 16), (384, 32), (64, 16)])  # 6- and 12-wide subspaces: the matmul path
def test_matmul_encoder_gives_faiss_codes(dim, m):
    """Subspace widths faiss has no SIMD code for are encoded by matmul + argmin: the same nearest codewords."""
    rng = np.random.default_rng(dim + m)
    cents = rng.standard_normal((8, dim)).astype(np.float32)
    codec = PQCodec(cents / np.linalg.norm(cents, axis=1, keepdims=True),
                    rng.standard_normal((m, PQ_CODES, dim // m)).astype(np.float32) * 0.1)
    residuals = rng.standard_normal((20_000, dim)).astype(np.float32) * 0.1
    residuals[:PQ_CODES] = np.concatenate([codec.codebooks[s] for s in range(m)], axis=1)  # exact codewords
    faiss_codes = codec._quantizer().compute_codes(residuals)
    ours = codec._encode_residuals_blas(residuals)

    def dist(codes):  # float64 squared distance of each token's chosen codeword, per subspace
        parts = residuals.reshape(len(residuals), m, dim // m).astype(np.float64)
        chosen = codec.codebooks[np.arange(m)[None, :], codes.astype(np.int64)].astype(np.float64)
        return ((parts - chosen) ** 2).sum(-1)

    differ = ours != faiss_codes
    assert differ.mean() < 1e-3  # only float-rounding near-ties may go the other way
    np.testing.assert_allclose(dist(ours)[differ], dist(faiss_codes)[differ], rtol=1e-5, atol=1e-7)
    assert np.array_equal(codec.encode_residuals(residuals)[:PQ_CODES], np.repeat(np.arange(PQ_CODES, dtype=np.uint8)[:, None], m, 1))



def test_verify_reports_a_codec_kind_that_is_not_a_string(pq_store):
    """Found by the fuzzer: a codec/zarr.json whose kind is a list made verify raise TypeError."""
    meta = pq_store / "codec" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["kind"] = []
    meta.write_text(json.dumps(doc))
    with store.Store.open(pq_store) as s:
        report = s.verify()
    assert not report.ok and any("codec kind [] is not a string" in f for f in report.failures)
