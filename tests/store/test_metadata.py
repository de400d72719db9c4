"""Typed per-document metadata in the store: round trips through every kind of commit, checks before
anything is written, and a forged or damaged metadata array is CorruptStoreError (FORMAT.md 8.2.2)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lodestore.store import CorruptStoreError, MetadataColumns, Store
from lodestore.store._segment import write_small_array

DIM = 16


def docs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(2, 6)), DIM)).astype(np.float32) for _ in range(n)]


META = [
    {"year": 2019, "lang": "en", "tags": ["a", "b"], "score": 0.5, "draft": False},
    {"year": 2021, "lang": "fr", "tags": [], "score": 2, "draft": True},
    {"year": None, "lang": "en"},
    {},
    {"year": -5, "tags": ["b"], "score": -1.25, "note": "x' OR 1=1 --"},
]


def make(tmp_path, meta=META, **kw) -> Store:
    s = Store.create(tmp_path / "s", dim=DIM, nbits=2, num_centroids=8)
    s.add([f"d{i}" for i in range(len(meta))], docs(len(meta)), metadata=meta, **kw)
    return s


def expected(meta: dict) -> dict:
    """What get_metadata returns: the non-null fields; numbers in a float field as floats."""
    out = {k: v for k, v in meta.items() if v is not None}
    if "score" in out:
        out["score"] = float(out["score"])
    return out


def test_round_trip_with_types_and_nulls(tmp_path):
    with make(tmp_path) as s:
        assert s.metadata_fields == {"year": "int", "lang": "str", "tags": "tags", "score": "float",
                                     "draft": "bool", "note": "str"}
        assert "metadata" in s.manifest.writer_features
        got = s.get_metadata([f"d{i}" for i in range(5)])
        assert got == [expected(m) for m in META]
        assert type(got[0]["year"]) is int and type(got[1]["score"]) is float and type(got[0]["draft"]) is bool
        assert s.verify().ok
    with Store.open(tmp_path / "s") as s:
        assert s.get_metadata(["d4", "d0"]) == [expected(META[4]), expected(META[0])]


def test_survives_upsert_delete_compact_and_reopen(tmp_path):
    with make(tmp_path) as s:
        s.add(["d1", "n0"], docs(2, 1), metadata=[{"year": 1999, "lang": "de"}, {"extra": ["z"]}], upsert=True)
        s.add(["plain"], docs(1, 2))  # a segment without metadata
        s.delete(["d3"])
        before = {i: m for i, m in zip(s.ids(), s.get_metadata(s.ids()))}
        assert before["d1"] == {"year": 1999, "lang": "de"} and before["plain"] == {} and before["n0"] == {"extra": ["z"]}
        s.compact()
        assert len(s.manifest.segments) == 1
        assert {i: m for i, m in zip(s.ids(), s.get_metadata(s.ids()))} == before
        assert s.verify().ok
    with Store.open(tmp_path / "s") as s:
        assert {i: m for i, m in zip(s.ids(), s.get_metadata(s.ids()))} == before
        with pytest.raises(KeyError, match="d3"):
            s.get_metadata(["d3"])


def test_ints_go_into_a_float_field(tmp_path):
    with make(tmp_path) as s:
        s.add(["x"], docs(1, 3), metadata=[{"score": 7}])
        assert s.get_metadata(["x"]) == [{"score": 7.0}] and s.metadata_fields["score"] == "float"


def _nothing_written(tmp_path, call) -> str:
    with make(tmp_path) as s:
        gen, listing = s.generation, sorted(p.name for p in (tmp_path / "s" / "segments").iterdir())
        with pytest.raises(ValueError) as e:
            call(s)
        assert s.generation == gen and sorted(p.name for p in (tmp_path / "s" / "segments").iterdir()) == listing
        assert s.metadata_fields["year"] == "int"
    return str(e.value)


@pytest.mark.parametrize("meta, message", [
    ([{"year": 1}], "got 1 metadata entries for 2 documents"),
    ("year", "one dict per document"),
    ([{"year": 1}, ["no"]], "'b': metadata is list, not a dict"),
    ([{"year": 1.5}, {}], "field 'year' has more than one type: float in document 'a' (the store holds it as int)"),
    ([{"new": 1}, {"new": "one"}], "field 'new' has more than one type"),
    ([{"lang": True}, {}], "field 'lang' has more than one type"),
    ([{"bad name": 1}, {}], "field name 'bad name' is not an identifier"),
    ([{"and": 1}, {}], "field name 'and'"),
    ([{"x": {"nested": 1}}, {}], "document 'a': field 'x': dict is not a metadata type"),
    ([{"x": [1, 2]}, {}], "tags are strings"),
    ([{"x": float("nan")}, {}], "not finite"),
    ([{"x": 1 << 70}, {}], "outside int64"),
    ([{"x": object()}, {}], "object is not a metadata type"),
])
def test_bad_metadata_is_a_value_error_and_writes_nothing(tmp_path, meta, message):
    msg = _nothing_written(tmp_path, lambda s: s.add(["a", "b"], docs(2, 4), metadata=meta))
    assert message in msg


def _forge(tmp_path, blob: bytes) -> None:
    """Replace the first segment's metadata array by `blob`, every CRC correct (a CRC-valid forgery)."""
    import zarr

    seg = next(p for p in (tmp_path / "s" / "segments").iterdir() if p.is_dir())
    shutil.rmtree(seg / "metadata")
    write_small_array(zarr.open_group(str(seg), mode="r+"), "metadata", np.frombuffer(blob, dtype=np.uint8))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["fields"]["year"].update(type="float"), "not in the manifest's metadata_fields"),
    (lambda d: d["fields"]["year"]["values"].pop(), "values is not a list of 5 integers"),
    (lambda d: d["fields"]["lang"]["values"].__setitem__(0, 99), "outside its dictionary"),
    (lambda d: d["fields"]["tags"]["offsets"].__setitem__(1, 9), "offsets"),
    (lambda d: d["fields"]["year"].update(null=[77]), "null index is outside"),
    (lambda d: d["fields"]["lang"].update(words=["en", "a"]), "not sorted"),
    (lambda d: d.update(documents=4), "format-1 object of 5 documents"),
    (lambda d: d["fields"].update(unknown={"type": "int", "values": [0] * 5}), "'unknown' is not in the manifest"),
])
def test_forged_metadata_is_corrupt(tmp_path, mutate, message):
    make(tmp_path).close()
    with Store.open(tmp_path / "s") as s:
        doc = json.loads(MetadataColumns.concat([s.segments[0].metadata()]).encode())
    mutate(doc)
    _forge(tmp_path, json.dumps(doc).encode())
    with Store.open(tmp_path / "s") as s:
        with pytest.raises(CorruptStoreError, match="metadata") as e:
            s.get_metadata(["d0"])
        assert message in str(e.value)
        assert not s.verify().ok


@pytest.mark.parametrize("blob", [b"\xff\xfe", b"[1, 2]", b"{" * 100_000, b"{\"format\": 1}"])
def test_garbage_metadata_is_corrupt(tmp_path, blob):
    make(tmp_path).close()
    _forge(tmp_path, blob)
    with Store.open(tmp_path / "s") as s:
        with pytest.raises(CorruptStoreError, match="metadata"):
            s.get_metadata(["d0"])


def test_a_flipped_byte_in_the_metadata_chunk_is_a_checksum_error(tmp_path):
    make(tmp_path).close()
    chunk = next((tmp_path / "s" / "segments").glob("seg-*/metadata/c/0"))
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x40
    chunk.write_bytes(bytes(data))
    with Store.open(tmp_path / "s") as s:
        with pytest.raises(CorruptStoreError, match="checksum mismatch"):
            s.get_metadata(["d0"])
        report = s.verify()
        assert not report.ok and any("metadata" in f for f in report.failures)


def test_manifest_fields_and_feature_come_together(tmp_path):
    from lodestore.store.testing.hostile import write_manifest_doc

    make(tmp_path).close()
    doc = json.loads((tmp_path / "s" / "manifest.json").read_text())
    doc["writer_features"] = []
    write_manifest_doc(tmp_path / "s", doc)
    with pytest.raises(CorruptStoreError, match="metadata_fields"):
        Store.open(tmp_path / "s")
    doc["writer_features"] = ["metadata"]
    doc["settings"]["metadata_fields"] = {"year": "decimal"}
    write_manifest_doc(tmp_path / "s", doc)
    with pytest.raises(CorruptStoreError, match="unknown type 'decimal'"):
        Store.open(tmp_path / "s")


def test_a_store_without_metadata_is_unchanged(tmp_path):
    """No metadata given: no array, no feature flag, no settings key (a v1 reader and writer see nothing new)."""
    with Store.create(tmp_path / "s", dim=DIM, nbits=2, num_centroids=8) as s:
        s.add(["a"], docs(1))
        assert s.manifest.writer_features == () and "metadata_fields" not in s.manifest.settings
        assert s.get_metadata(["a"]) == [{}]
    assert not list((tmp_path / "s" / "segments").glob("seg-*/metadata"))


def test_bundle_add_takes_metadata(tmp_path):
    lens = np.array([3, 4, 2])
    bundle = tmp_path / "b"
    bundle.mkdir()
    np.save(bundle / "docs.npy", np.random.default_rng(0).standard_normal((9, DIM)).astype(np.float32))
    np.save(bundle / "doclens.npy", lens)
    with Store.create(tmp_path / "s", dim=DIM, nbits=2, num_centroids=8) as s:
        with pytest.raises(ValueError, match="2 metadata entries for 3 documents"):
            s.add_embeddings(bundle, ids=["a", "b", "c"], metadata=[{}, {}], progress=False)
        assert s.generation == 0
        s.add_embeddings(bundle, ids=["a", "b", "c"], metadata=[{"k": 1}, {}, {"k": 3}], progress=False)
        assert s.get_metadata(["c", "b"]) == [{"k": 3}, {}]
