"""Format versions and feature flags: a reader refuses what it does not know, and says what to do."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import google_crc32c
import numpy as np
import pytest

from lodestore import store
from lodestore.store import FORMAT_VERSION, OLDEST_READABLE_VERSION, Manifest, UnsupportedFormatError
from lodestore.store._manifest import MANIFEST_NAME


def read_manifest(root: Path) -> Manifest:
    return Manifest.from_bytes((root / MANIFEST_NAME).read_bytes())


def rewrite(root: Path, **changes) -> None:
    """Rewrite the manifest through Manifest's API (a valid checksum) with fields changed."""
    m = dataclasses.replace(read_manifest(root), **changes)
    (root / MANIFEST_NAME).write_bytes(m.to_bytes())


def rewrite_raw(root: Path, edit) -> None:
    """Edit the manifest's JSON body by hand and recompute its checksum as FORMAT.md specifies:
    CRC32C of the body (every key but "checksum") serialized with sorted keys and no spaces."""
    doc = json.loads((root / MANIFEST_NAME).read_bytes())
    doc.pop("checksum")
    edit(doc)
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    doc["checksum"] = f"crc32c:{google_crc32c.value(canonical):08x}"
    (root / MANIFEST_NAME).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def test_the_checksum_recipe_matches_the_writer(store_copy):
    """Recomputing the checksum by hand reproduces the manifest byte for byte."""
    before = (store_copy / MANIFEST_NAME).read_bytes()
    rewrite_raw(store_copy, lambda doc: None)
    assert (store_copy / MANIFEST_NAME).read_bytes() == before


def test_versions_are_sane():
    assert 1 <= OLDEST_READABLE_VERSION <= FORMAT_VERSION


@pytest.mark.parametrize("how", ["api", "by hand"])
@pytest.mark.parametrize("writable", [False, True])
def test_future_format_version_is_refused_with_upgrade_advice(store_copy, how, writable):
    if how == "api":
        rewrite(store_copy, format_version=99)
    else:
        rewrite_raw(store_copy, lambda doc: doc.update(format_version=99))
    with pytest.raises(UnsupportedFormatError) as info:
        store.Store.open(store_copy, writable=writable)
    message = str(info.value)
    assert "99" in message and "upgrade" in message.lower(), message
    assert MANIFEST_NAME in message


def test_future_version_is_refused_before_its_checksum_is_judged(store_copy):
    """A newer format may checksum differently: the version decides first."""
    rewrite_raw(store_copy, lambda doc: doc.update(format_version=FORMAT_VERSION + 1))
    text = (store_copy / MANIFEST_NAME).read_text().replace('"checksum": "crc32c:', '"checksum": "crc32c:f')
    (store_copy / MANIFEST_NAME).write_text(text)
    with pytest.raises(UnsupportedFormatError, match="upgrade"):
        store.Store.open(store_copy)


@pytest.mark.parametrize("version", [OLDEST_READABLE_VERSION - 1, -1, "1", 1.0, None, [1]])
def test_unreadable_or_malformed_versions_are_refused(store_copy, version):
    rewrite_raw(store_copy, lambda doc: doc.update(format_version=version))
    with pytest.raises(UnsupportedFormatError):
        store.Store.open(store_copy)


def test_missing_format_version_is_refused(store_copy):
    rewrite_raw(store_copy, lambda doc: doc.pop("format_version"))
    with pytest.raises(UnsupportedFormatError):
        store.Store.open(store_copy)


@pytest.mark.parametrize("writable", [False, True])
def test_unknown_reader_feature_is_refused(store_copy, writable):
    rewrite(store_copy, reader_features=("zstd-residuals",))
    with pytest.raises(UnsupportedFormatError) as info:
        store.Store.open(store_copy, writable=writable)
    assert "zstd-residuals" in str(info.value) and "upgrade" in str(info.value)


def test_unknown_writer_feature_allows_reading_only(store_copy, template_corpus):
    rewrite(store_copy, writer_features=("compaction-log",))
    with store.Store.open(store_copy) as s:  # readers do not care about writer features
        assert s.ids() == template_corpus.ids
        assert s.get(template_corpus.ids[0]).shape == template_corpus.docs[0].shape
    with pytest.raises(UnsupportedFormatError) as info:
        store.Store.open(store_copy, writable=True)
    assert "compaction-log" in str(info.value) and "read-only" in str(info.value)
    # the refused writable open let go of the writer lock
    rewrite(store_copy, writer_features=())
    with store.Store.open(store_copy, writable=True) as s:
        s.delete([template_corpus.ids[0]])


def test_refused_open_releases_the_lock(store_copy):
    rewrite(store_copy, format_version=99)
    with pytest.raises(UnsupportedFormatError):
        store.Store.open(store_copy, writable=True)
    rewrite_raw(store_copy, lambda doc: doc.update(format_version=FORMAT_VERSION))
    store.Store.open(store_copy, writable=True).close()


def test_manifest_records_what_a_reader_needs(template_store):
    doc = json.loads((template_store / MANIFEST_NAME).read_bytes())
    assert doc["format"] == "lodestore"
    assert doc["format_version"] == FORMAT_VERSION
    assert doc["generation"] == 2 and doc["dim"] == 32 and doc["nbits"] == 2
    assert doc["codec"] == {"kind": "residual", "path": "codec", "dim": 32, "nbits": 2, "num_centroids": 32}
    assert [s["name"] for s in doc["segments"]] == ["seg-000001", "seg-000002"]
    assert doc["reader_features"] == [] and doc["writer_features"] == []
    assert doc["checksum"].startswith("crc32c:")
    assert Manifest.from_bytes(Manifest.from_bytes((template_store / MANIFEST_NAME).read_bytes()).to_bytes()) == read_manifest(
        template_store
    )
    # the segment group says what it is, for any zarr v3 reader
    seg = json.loads((template_store / "segments" / "seg-000001" / "zarr.json").read_bytes())
    assert seg["zarr_format"] == 3 and seg["attributes"]["lodestore_segment"] == 1


def test_zarr_reads_the_token_arrays(template_store):
    """The token arrays are plain Zarr v3: zarr-python reads what the direct reader reads."""
    zarr = pytest.importorskip("zarr")
    with store.Store.open(template_store) as s:
        seg = s.segments[0]
        for name in ("codes", "residuals"):
            via_zarr = zarr.open_array(str(seg.path / name), mode="r")[:]
            np.testing.assert_array_equal(via_zarr, getattr(seg, name).read_all())
        offsets = zarr.open_array(str(seg.path / "doc_offsets"), mode="r")[:]
        np.testing.assert_array_equal(offsets, seg.doc_offsets)
