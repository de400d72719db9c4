"""Corruption is reported, never silently searched: every data byte is under a checksum."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lodestore import store
from lodestore.store import CorruptStoreError, StoreError
from lodestore.store import _native
from lodestore.store._manifest import MANIFEST_NAME

google_crc32c = pytest.importorskip("google_crc32c")


@pytest.fixture(params=["C reader", "Python reader"])
def reader(request, monkeypatch):
    """Every read check runs through both readers: the C kernel (one call, GIL released) and os.preadv."""
    if request.param == "C reader":
        if _native.read_chunks is None:
            pytest.skip("C kernels not built")
    else:
        monkeypatch.setattr(_native, "read_chunks", None)
    return request.param


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def chunk_layout(root: Path, seg: int, array: str):
    """(reader, shard file, [(chunk, offset of its bytes)]) of a token array of segment `seg`."""
    s = store.Store.open(root)
    raw = getattr(s.segments[seg], array)
    idx = raw.shard_index(0)
    chunks = [(pos, int(idx[pos, 0])) for pos in range(raw.chunks_per_shard) if int(idx[pos, 0]) != 2**64 - 1]
    return s, raw, chunks


def docs_in_chunk(s: store.Store, seg: int, inner_rows: int, chunk: int) -> tuple[list[str], list[str]]:
    """(ids with a row in `chunk`, ids with no row in it) of segment `seg`."""
    offsets = s.segments[seg].doc_offsets
    ids = s.segments[seg].ids()
    inside, outside = [], []
    for d, doc_id in enumerate(ids):
        lo, hi = int(offsets[d]) // inner_rows, (int(offsets[d + 1]) - 1) // inner_rows
        (inside if lo <= chunk <= hi else outside).append(doc_id)
    return inside, outside


# --------------------------------------------------------------------------- token arrays (read directly)


@pytest.mark.parametrize("where", ["payload", "crc trailer"])
def test_flipped_residual_byte_is_reported_and_refused(store_copy, where, reader):
    s, raw, chunks = chunk_layout(store_copy, 0, "residuals")
    assert len(chunks) >= 2, "the template segment should span two inner chunks"
    chunk, offset = chunks[1]
    inside, outside = docs_in_chunk(s, 0, raw.inner_rows, chunk)
    assert inside and outside
    good = {i: s.get(i) for i in outside}
    shard = raw.shard_file(0)
    s.close()
    byte = offset + (37 if where == "payload" else raw.chunk_bytes + 2)
    flip(shard, byte)

    with store.Store.open(store_copy) as s:
        report = s.verify()
        assert not report.ok
        assert len(report.failures) == 1, report.failures
        failure = report.failures[0]
        assert str(shard) in failure and f"inner chunk {chunk}" in failure, failure
        assert "CORRUPT" in str(report)
        for doc_id in inside:
            with pytest.raises(CorruptStoreError, match=f"inner chunk {chunk}") as info:
                s.get(doc_id)
            assert str(shard) in str(info.value)
        for doc_id, tokens in good.items():  # the rest of the segment still reads
            np.testing.assert_array_equal(s.get(doc_id), tokens)


def test_flipped_code_byte_is_reported_and_refused(store_copy, reader):
    s, raw, chunks = chunk_layout(store_copy, 1, "codes")
    shard = raw.shard_file(0)
    victim = s.segments[1].ids()[3]
    first_row = int(s.segments[1].doc_offsets[3])
    s.close()
    flip(shard, chunks[0][1] + first_row * raw.row_bytes, 0x80)
    with store.Store.open(store_copy) as s:
        failures = s.verify().failures
        assert len(failures) == 1 and str(shard) in failures[0] and "inner chunk 0" in failures[0]
        with pytest.raises(CorruptStoreError):
            s.get(victim)


def test_shard_index_corruption_is_reported(store_copy):
    s, raw, _ = chunk_layout(store_copy, 0, "residuals")
    shard = raw.shard_file(0)
    victim = s.segments[0].ids()[0]
    index_bytes = raw.chunks_per_shard * 16 + 4
    s.close()
    size = shard.stat().st_size
    flip(shard, size - index_bytes + 3)  # the offset field of inner chunk 0
    with store.Store.open(store_copy) as s:
        failures = s.verify().failures
        assert any(str(shard) in f and "shard index" in f for f in failures), failures
        with pytest.raises(CorruptStoreError, match="shard index"):
            s.get(victim)


def test_truncated_shard_is_reported(store_copy, reader):
    s, raw, _ = chunk_layout(store_copy, 1, "residuals")
    shard = raw.shard_file(0)
    s.close()
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with store.Store.open(store_copy) as s:
        failures = s.verify().failures
        assert failures and all(str(shard) in f for f in failures), failures


def test_missing_shard_file_is_reported(store_copy, reader):
    s, raw, _ = chunk_layout(store_copy, 1, "codes")
    shard = raw.shard_file(0)
    victim = s.segments[1].ids()[0]
    s.close()
    shard.unlink()
    with store.Store.open(store_copy) as s:
        failures = s.verify().failures
        assert any(str(shard) in f and "missing" in f for f in failures), failures
        with pytest.raises(CorruptStoreError, match="missing"):
            s.get(victim)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_c_reader_reads_the_same_rows_as_the_python_reader(template_store, data):
    if _native.read_chunks is None:
        pytest.skip("C kernels not built")
    with store.Store.open(template_store) as s:
        raw = s.segments[data.draw(st.integers(0, len(s.segments) - 1))].residuals
        total = -(-raw.shape[0] // raw.inner_rows)
        ids = np.array(sorted(data.draw(st.sets(st.integers(0, total - 1), min_size=1))), dtype=np.int64)
        fast, nbytes, _ = raw.read_chunks(ids)
        kernel, _native.read_chunks = _native.read_chunks, None
        try:
            slow, nbytes_slow, _ = raw.read_chunks(ids)
        finally:
            _native.read_chunks = kernel
    np.testing.assert_array_equal(fast, slow)
    assert nbytes == nbytes_slow == len(ids) * (raw.chunk_bytes + 4)


def test_c_reader_reads_runs_across_shards_like_the_python_reader(tmp_path, monkeypatch):
    """Shards of 4,096 rows (inner chunks of 1,024-2,048): one read spans several shard files, runs
    broken at shard edges and at gaps."""
    if _native.read_chunks is None:
        pytest.skip("C kernels not built")
    from lodestore.store import _segment
    from lodestore.store.testing.synthetic import make_corpus

    monkeypatch.setattr(_segment, "SHARD_ROWS", 4096)
    tokens, lens = make_corpus(260, 16, n_clusters=4, mean_len=100, min_len=50, max_len=150, seed=5)
    bounds = np.concatenate([[0], np.cumsum(lens)])
    with store.Store.create(tmp_path / "s", dim=16, nbits=2, num_centroids=16, seed=1) as s:
        s.add([f"d{i}" for i in range(260)], [tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
    with store.Store.open(tmp_path / "s") as s:
        for raw in (s.segments[0].residuals, s.segments[0].codes):
            assert raw.n_shards >= 5
            total = -(-raw.shape[0] // raw.inner_rows)
            rng = np.random.default_rng(0)
            for ids in (np.arange(total), np.sort(rng.choice(total, total // 2, replace=False))):
                fast = raw.read_chunks(ids)
                monkeypatch.setattr(_native, "read_chunks", None)
                slow = raw.read_chunks(ids)
                monkeypatch.undo()
                np.testing.assert_array_equal(fast[0], slow[0])
                assert fast[1] == slow[1]
            np.testing.assert_array_equal(raw.read_all()[:, ...], raw.read_ranges(np.array([0]), np.array([raw.shape[0]]))[0])


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_one_call_row_reads_and_hints_match_the_python_reader(tmp_path_factory, data):
    """read_ranges and advise in one C call (store/_native.py read_rows, advise_rows) against the Python
    reader they stand in for: the same rows and io counts, the same hints, for ranges in any order, empty,
    overlapping, and across shards (shards of 4,096 rows here)."""
    if _native.read_rows is None:
        pytest.skip("C kernels not built")
    from lodestore.store import _segment
    from lodestore.store.testing.synthetic import make_corpus

    path = tmp_path_factory.getbasetemp() / "one_call_store"
    if not path.exists():
        saved, _segment.SHARD_ROWS = _segment.SHARD_ROWS, 4096
        try:
            tokens, lens = make_corpus(200, 16, n_clusters=4, mean_len=100, min_len=50, max_len=150, seed=7)
            bounds = np.concatenate([[0], np.cumsum(lens)])
            with store.Store.create(path, dim=16, nbits=2, num_centroids=16, seed=1) as s:
                s.add([f"d{i}" for i in range(200)], [tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
        finally:
            _segment.SHARD_ROWS = saved
    with store.Store.open(path) as s:
        raw = s.segments[0].residuals if data.draw(st.booleans()) else s.segments[0].codes
        n = raw.shape[0]
        pairs = data.draw(st.lists(st.tuples(st.integers(0, n), st.integers(0, 300)), min_size=1, max_size=12))
        starts = np.array([a for a, _ in pairs], dtype=np.int64)
        stops = np.minimum(starts + np.array([b for _, b in pairs], dtype=np.int64), n)
        fast, io_fast = raw.read_ranges(starts, stops)
        native_ok = raw._read_rows_native(starts, stops, int((stops - starts).sum())) is not None
        hinted_fast = raw.advise(np.sort(starts), np.sort(starts) + (stops - starts)[np.argsort(starts)])
        kernels = _native.read_rows, _native.advise_rows
        _native.read_rows = _native.advise_rows = None
        try:
            slow, io_slow = raw.read_ranges(starts, stops)
            hinted_slow = raw.advise(np.sort(starts), np.sort(starts) + (stops - starts)[np.argsort(starts)])
        finally:
            _native.read_rows, _native.advise_rows = kernels
    np.testing.assert_array_equal(fast, slow)
    assert io_fast["bytes"] >= io_slow["bytes"]  # every chunk needed, at least once
    keep = stops > starts
    first, last = starts[keep] // raw.inner_rows, (stops[keep] - 1) // raw.inner_rows
    # the one C call reads ranges whose chunks come in order (a range may start in the chunk the previous one
    # ended in); others it leaves to the Python reader, so the comparison above is not the Python path twice
    assert native_ok == bool((first[1:] >= last[:-1]).all())
    if (first[1:] > last[:-1]).all():  # no chunk shared: the same reads
        assert (io_fast["bytes"], io_fast["calls"]) == (io_slow["bytes"], io_slow["calls"])
    assert hinted_fast == hinted_slow


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 7))
def test_crc32c_instruction_and_table_agree_with_google_crc32c(data, skip):
    if _native.crc32c is None:
        pytest.skip("C kernels not built")
    import google_crc32c

    want = google_crc32c.value(data[skip:])
    assert _native.crc32c(data[skip:]) == want and _native.crc32c(data[skip:], table=True) == want


def test_c_reader_reports_read_errors_with_errno(tmp_path):
    if _native.read_chunks is None:
        pytest.skip("C kernels not built")
    import errno
    import os

    import google_crc32c

    body = np.arange(64, dtype=np.uint8).tobytes()
    f = tmp_path / "chunks"
    f.write_bytes((body + google_crc32c.value(body).to_bytes(4, "little")) * 3)
    assert _native.crc32c(body) == google_crc32c.value(body)
    out = np.empty(3 * 64, dtype=np.uint8)
    fd = os.open(f, os.O_RDONLY)
    try:
        status, which, err, waits = _native.read_chunks(np.array([fd]), np.array([0]), np.array([3]), 64, out)
        assert (status, which, err) == (0, 0, 0) and waits in (0, -1)  # just written: in the page cache
        assert out.tobytes() == body * 3
        assert _native.read_chunks(np.array([fd, fd]), np.array([0, 68]), np.array([1, 3]), 64,
                                   np.empty(4 * 64, np.uint8))[:2] == (_native.READ_SHORT, 1)
        assert _native.read_chunks(np.array([fd]), np.array([1]), np.array([1]), 64, out[:64])[:2] == (
            _native.READ_BAD_CRC, 0)
        with pytest.raises(ValueError, match="does not hold"):
            _native.read_chunks(np.array([fd]), np.array([0]), np.array([2]), 64, out)
    finally:
        os.close(fd)
    assert _native.read_chunks(np.array([-1]), np.array([0]), np.array([1]), 64, out[:64])[:3] == (
        _native.READ_ERROR, 0, errno.EBADF)


@pytest.mark.skipif(_native.read_chunks is None, reason="the C reader is not built")
def test_native_reader_counts_reads_that_wait_for_the_device(tmp_path):
    """A read of a file evicted from the page cache waits for the device (counted); once cached, it does not;
    a hint (advise) fills the cache ahead of the read."""
    body = np.arange(4096, dtype=np.uint8).tobytes()
    f = tmp_path / "chunks"
    f.write_bytes((body + google_crc32c.value(body).to_bytes(4, "little")) * 64)
    fd = os.open(f, os.O_RDONLY)
    try:
        os.fsync(fd)
        out = np.empty(4096, dtype=np.uint8)
        offsets = np.array([10 * 4100])

        def waits() -> int:
            return _native.read_chunks(np.array([fd]), offsets, np.array([1]), 4096, out)[3]

        if waits() == -1:
            pytest.skip("this kernel or file system cannot read from the page cache only (RWF_NOWAIT)")
        assert waits() == 0  # just read: cached
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if waits() == 0:
            pytest.skip(f"{tmp_path}: the page cache cannot be dropped here (tmpfs?)")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert _native.advise(np.array([fd]), offsets, np.array([4100])) == 1
        for _ in range(200):  # the hinted read completes in the background
            if waits() == 0:
                break
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            _native.advise(np.array([fd]), offsets, np.array([4100]))
            time.sleep(0.01)
        else:
            pytest.fail("a hinted chunk never reached the page cache")
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- compressed arrays


@pytest.mark.parametrize("array", ["doc_offsets", "ivf_docs", "ivf_offsets", "id_offsets", "id_bytes"])
def test_flipped_byte_in_a_compressed_array_is_reported(store_copy, array):
    chunk = store_copy / "segments" / "seg-000002" / array / "c" / "0"
    flip(chunk, chunk.stat().st_size // 2)
    with store.Store.open(store_copy) as s:
        report = s.verify()
    assert not report.ok
    assert any(f"seg-000002/{array}" in f for f in report.failures), report.failures


@pytest.mark.parametrize("array", ["doc_offsets", "id_offsets", "id_bytes"])
def test_reads_through_a_corrupt_compressed_array_fail_loudly(store_copy, template_corpus, array):
    chunk = store_copy / "segments" / "seg-000002" / array / "c" / "0"
    flip(chunk, 5)
    with pytest.raises(CorruptStoreError, match=f"seg-000002/{array}"):
        with store.Store.open(store_copy) as s:
            s.get(template_corpus.ids[-1])


def test_ivf_corruption_fails_loudly_when_read(store_copy):
    chunk = store_copy / "segments" / "seg-000001" / "ivf_docs" / "c" / "0"
    flip(chunk, 7)
    with store.Store.open(store_copy) as s:
        with pytest.raises(CorruptStoreError, match="ivf_docs"):
            s.segments[0].ivf()
        s.segments[1].ivf()  # the other segment is fine


# --------------------------------------------------------------------------- codec


@pytest.mark.parametrize("array", ["centroids", "bucket_cutoffs", "bucket_weights"])
def test_flipped_codec_byte_is_reported(store_copy, template_corpus, array):
    chunk = next(p for p in (store_copy / "codec" / array / "c").rglob("*") if p.is_file())
    flip(chunk, 1)
    with store.Store.open(store_copy) as s:
        failures = s.verify().failures
        assert len(failures) == 1 and str(chunk) in failures[0], failures
        with pytest.raises(CorruptStoreError, match=f"codec/{array}"):
            s.get(template_corpus.ids[0])


# --------------------------------------------------------------------------- deletion bitmaps


def test_corrupt_deletion_bitmap_is_refused(store_copy, template_corpus):
    with store.Store.open(store_copy, writable=True) as s:
        s.delete([template_corpus.ids[2]])
    bitmap = store_copy / "segments" / "seg-000001.000003.del"
    flip(bitmap, 24)
    with pytest.raises(CorruptStoreError, match="seg-000001.000003.del"):
        store.Store.open(store_copy).ids()


# --------------------------------------------------------------------------- the manifest


def _manifest(root: Path) -> Path:
    return root / MANIFEST_NAME


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.replace('"generation": 2', '"generation": 3'),
        lambda t: t.replace('"dim": 32', '"dim": 64', 1),
        lambda t: t.replace('"seg-000002"', '"seg-000009"'),
        lambda t: t.replace('"checksum": "crc32c:', '"checksum": "crc32c:0'),
    ],
    ids=["generation", "dim", "segment name", "checksum"],
)
def test_edited_manifest_body_is_refused(store_copy, edit):
    path = _manifest(store_copy)
    text = path.read_text()
    edited = edit(text)
    assert edited != text
    path.write_text(edited)
    with pytest.raises(CorruptStoreError, match="checksum mismatch"):
        store.Store.open(store_copy)
    with pytest.raises(CorruptStoreError):
        store.Store.open(store_copy, writable=True)


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"\xff\xfe not json", b"[]", b'{"format": "other"}', b"null"],
    ids=["empty", "torn", "binary", "a list", "another format", "null"],
)
def test_garbage_manifest_is_refused(store_copy, content):
    _manifest(store_copy).write_bytes(content)
    with pytest.raises(CorruptStoreError):
        store.Store.open(store_copy)


def test_torn_manifest_write_is_refused(store_copy):
    data = _manifest(store_copy).read_bytes()
    _manifest(store_copy).write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptStoreError, match="not valid JSON"):
        store.Store.open(store_copy)


def test_missing_manifest(store_copy):
    _manifest(store_copy).unlink()
    with pytest.raises(StoreError, match="no manifest.json"):
        store.Store.open(store_copy)


def test_verify_reports_a_manifest_corrupted_after_open(store_copy):
    with store.Store.open(store_copy) as s:
        flip(_manifest(store_copy), 40)
        report = s.verify()
        assert not report.ok and "manifest.json" in report.failures[0]


def test_a_manifest_naming_a_missing_segment_is_reported(store_copy):
    """A manifest with a valid checksum but a segment that is not there: verify says so."""
    path = _manifest(store_copy)
    m = store.Manifest.from_bytes(path.read_bytes())
    path.write_bytes(m.to_bytes())  # the checksum API round-trips
    import shutil

    shutil.rmtree(store_copy / "segments" / "seg-000002")
    with store.Store.open(store_copy) as s:
        failures = s.verify().failures
        assert any("seg-000002" in f for f in failures), failures


# --------------------------------------------------------------------------- any byte


def _checked_files(root: Path) -> list[Path]:
    """Every file whose bytes are under a checksum: chunk and shard files, bitmaps, the manifest."""
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name not in ("zarr.json", ".lock")]
    assert any(p.name == MANIFEST_NAME for p in files)
    return files


@pytest.fixture(scope="module")
def damaged_copy(template_store, tmp_path_factory, template_corpus):
    """One copy for the whole property: each example flips one bit and flips it back."""
    import shutil

    dst = tmp_path_factory.mktemp("anybyte") / "store"
    shutil.copytree(template_store, dst)
    with store.Store.open(dst, writable=True) as s:
        s.delete([template_corpus.ids[0]])  # so a bitmap is among the files too
    return dst


@settings(max_examples=max(30, settings().max_examples))
@given(data=st.data())
def test_any_flipped_bit_is_reported_by_verify(damaged_copy, data):
    files = _checked_files(damaged_copy)
    path = data.draw(st.sampled_from(files), label="file")
    offset = data.draw(st.integers(0, path.stat().st_size - 1), label="offset")
    mask = 1 << data.draw(st.integers(0, 7), label="bit")
    flip(path, offset, mask)
    try:
        try:
            s = store.Store.open(damaged_copy)
        except StoreError:
            return  # refused at open: reported
        with s:
            report = s.verify()
            assert not report.ok, f"flip of bit {mask:#x} at {offset} in {path} went unnoticed"
    finally:
        flip(path, offset, mask)
    with store.Store.open(damaged_copy) as s:
        assert s.verify().ok
