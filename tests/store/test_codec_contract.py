"""The codec contract (store/codecs/): every registered codec satisfies the Codec protocol, has one
name, saves and loads through the registry, and is what Store.create's codec argument names."""

from __future__ import annotations

import numpy as np
import pytest

from lodestore import store
from lodestore.store import Codec, PQCodec, ScalarCodec
from lodestore.store.codecs import CODECS, read_codec, train_codec, verify_codec, write_codec
from lodestore.store.codecs._centroids import CentroidCodec

SIZES = {"scalar": {"nbits": 2, "pq_subspaces": None}, "pq": {"nbits": 0, "pq_subspaces": 16}}


@pytest.fixture(scope="module")
def trained(clustered_corpus):
    corpus = clustered_corpus(60, 64, seed=4, n_clusters=8, mean_len=20)
    sample = corpus.tokens.astype(np.float32)
    return sample, {name: train_codec(sample, name, num_centroids=16, n_tokens=len(sample), seed=2, **SIZES[name],
                                      residual_sample=sample) for name in CODECS}


def test_the_registry_names_each_codec_once():
    assert list(CODECS) == ["scalar", "pq"]
    assert CODECS["scalar"] is ScalarCodec and CODECS["pq"] is PQCodec and store.ResidualCodec is ScalarCodec
    assert [c.name for c in CODECS.values()] == list(CODECS)
    assert sorted(c.manifest_kind for c in CODECS.values()) == ["pq", "residual"]  # on-disk kinds, format v1


@pytest.mark.parametrize("name", list(CODECS))
def test_every_codec_keeps_the_contract(trained, tmp_path, name):
    sample, codecs = trained
    codec = codecs[name]
    assert isinstance(codec, Codec) and type(codec) is CODECS[name]
    # shared behaviour comes from the base class, not from methods borrowed off another codec
    for attr in ("assign", "decode", "dim", "num_centroids", "code_dtype", "centroids_f16"):
        assert attr not in vars(type(codec)), f"{name} redefines {attr}; share it through CentroidCodec"
        assert getattr(type(codec), attr) is getattr(CentroidCodec, attr)
    codes, rows = codec.encode(sample[:50])
    assert codes.dtype == codec.code_dtype and rows.shape == (50, codec.residual_bytes)
    tables = codec.byte_tables()
    assert tables.shape[:2] == (codec.residual_bytes, 256)
    by_tables = codec.centroids[codes] + np.concatenate(
        [tables[j, rows[:, j]] for j in range(codec.residual_bytes)], axis=1)
    np.testing.assert_allclose(codec.decode(codes, rows, normalize=False), by_tables, atol=1e-6)
    entry = codec.manifest_entry("codec")
    assert (entry.kind, entry.dim, entry.nbits, entry.num_centroids) == (
        codec.manifest_kind, 64, codec.manifest_nbits, codec.num_centroids)
    write_codec(tmp_path / "codec", codec)
    again = read_codec(tmp_path / "codec", entry, nbits=entry.nbits, dim=64)
    assert again == codec and type(again) is type(codec)
    assert verify_codec(tmp_path / "codec") == (len(codec.arrays), [])


def test_an_unknown_codec_kind_is_unsupported(trained, tmp_path):
    codec = trained[1]["scalar"]
    write_codec(tmp_path / "codec", codec)
    entry = codec.manifest_entry("codec")
    from dataclasses import replace

    with pytest.raises(store.UnsupportedFormatError, match="'opq'"):
        read_codec(tmp_path / "codec", replace(entry, kind="opq"), nbits=2, dim=64)
    with pytest.raises(ValueError, match="codec must be one of"):
        train_codec(trained[0], "opq", nbits=2, pq_subspaces=None, num_centroids=16, n_tokens=10, seed=0)


@pytest.mark.parametrize("name", list(CODECS))
def test_store_create_names_the_codec_it_stores(tmp_path, clustered_corpus, name):
    corpus = clustered_corpus(20, 64, seed=5, n_clusters=4, mean_len=12)
    with store.Store.create(tmp_path / "s", dim=64, codec=name, num_centroids=8) as s:
        s.add(corpus.ids, corpus.docs)
        assert type(s.codec) is CODECS[name] and s.stats()["codec"] == name
        assert s.manifest.codec.kind == CODECS[name].manifest_kind
