"""A hostile store directory cannot crash, hang, exhaust, mislead or escape the reader (FORMAT.md 4.1, 4.2, 11.1).

One group of tests per class of defect, each on a store forged so it gets past the
checksums (CRCs recomputed, store/testing/hostile.py): codec chains, paths and
symlinks, special files, allocation bombs, silently wrong answers, error hygiene.
Every case runs in a child process with a time and address-space limit, so a
regression fails its test (as a signal, hang or out-of-memory) instead of killing
the suite.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lodestore import store
from lodestore.store.testing.hostile import (crc, exercise, gzip_chunk, make_outside, run_limited, snapshot,
                                              write_manifest_doc)

SEG = "segments/seg-000001"
MB = 1 << 20


@pytest.fixture
def sandbox(template_store, tmp_path):
    """(store, outside): a copy of the template store beside an `outside/` tree nothing may change."""
    import shutil

    shutil.copytree(template_store, tmp_path / "store")
    return tmp_path / "store", make_outside(tmp_path)


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_bytes())


def edit_zarr(root: Path, rel: str, change) -> None:
    path = root / rel / "zarr.json"
    meta = json.loads(path.read_bytes())
    change(meta)
    path.write_text(json.dumps(meta))


def read_op(path: Path) -> None:
    """Open, list, get and verify; raise if verify says OK (so a forgery must be refused somewhere)."""
    with store.Store.open(path) as s:
        for i in s.ids():
            s.get(i)
        for seg in s.segments:
            seg.ivf()
        report = s.verify()
    assert not report.ok, "verify said OK on a forged store"


def refused(fn, *args, words=(), timeout=30.0, address_space=2 << 30):
    """Run fn(*args) in a limited child; it must end with a StoreError whose message has `words`."""
    outcome = run_limited(fn, *args, timeout=timeout, address_space=address_space)
    assert outcome.kind == "refused", f"{outcome.kind}: {outcome.detail}"
    for w in words:
        assert w in outcome.detail, outcome.detail
    return outcome.detail


# --------------------------------------------------------------------------- 1. codec chains


@pytest.mark.parametrize("compressor", [{"name": "zstd", "configuration": {"level": 1}}, {"name": "lz4"},
                                        {"name": "gzip", "configuration": {"level": 99}}])
def test_zarr_json_naming_another_compressor_is_refused(sandbox, compressor):
    root, _ = sandbox
    edit_zarr(root, f"{SEG}/doc_offsets", lambda m: m["codecs"].__setitem__(1, compressor))
    refused(read_op, root, words=("doc_offsets/zarr.json", "format specifies"))


def test_token_array_codec_chain_must_be_exact(sandbox):
    root, _ = sandbox
    edit_zarr(root, f"{SEG}/codes", lambda m: m["codecs"][0]["configuration"]["codecs"].insert(1, {"name": "gzip"}))
    refused(read_op, root, words=("codes/zarr.json",))


def _blosc_frame(expected: int, *, cbytes_delta: int = 0, start: int = 10**6) -> bytes:
    """An lz4 blosc frame whose header matches the array but whose block table points far past the frame."""
    header = struct.pack("<BBBBiii", 2, 1, 0x20, 8, expected, expected, 16 + 4 + cbytes_delta)
    return header + struct.pack("<i", start)


@pytest.mark.parametrize("lie", ["block start past the frame", "cbytes larger than the frame"])
def test_malformed_blosc_frame_never_reaches_a_decoder(sandbox, lie):
    """CRC-correct blosc frames that make c-blosc read past its buffer are refused by the frame walker."""
    root, _ = sandbox
    n = manifest(root)["segments"][0]["documents"] + 1
    edit_zarr(root, f"{SEG}/doc_offsets", lambda m: m["codecs"].__setitem__(
        1, {"name": "blosc", "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "noshuffle", "typesize": 8,
                                               "blocksize": 0}}))
    frame = _blosc_frame(n * 8, start=10**6) if lie.startswith("block") else _blosc_frame(n * 8, cbytes_delta=10**6)
    (root / SEG / "doc_offsets/c/0").write_bytes(frame + crc(frame))
    refused(read_op, root, words=("doc_offsets/c/0", "blosc"))


def test_gzip_bomb_is_refused_without_inflating_it(sandbox):
    """A 256 MiB inflate in a CRC-correct chunk: refused after at most the expected size + 1 byte of output."""
    root, _ = sandbox
    (root / SEG / "doc_offsets/c/0").write_bytes(gzip_chunk(bytes(256 * MB)))
    refused(read_op, root, words=("doc_offsets/c/0", "gzip"), address_space=64 * MB)


# --------------------------------------------------------------------------- 2. names, paths and symlinks


@pytest.mark.parametrize("field, value", [
    ("name", "../../outside/victim"), ("name", "/tmp"), ("name", "seg-000001/../../outside"), ("name", "seg-1"),
    ("deletes", "../../outside/file.bin"), ("deletes", "seg-000002.000001.del"), ("codec", "../outside/victim"),
])
def test_names_outside_the_grammar_are_refused_at_parse(sandbox, field, value):
    root, outside = sandbox
    doc = manifest(root)
    if field == "codec":
        doc["codec"]["path"] = value
    else:
        doc["segments"][0][field] = value
        if field == "deletes":
            doc["segments"][0]["deleted"] = 1
    write_manifest_doc(root, doc)
    before = snapshot(root.parent)
    refused(store.Store.open, root, words=("manifest.json",))
    refused(exercise, str(root))
    assert snapshot(root.parent) == before


def _replace_with_link(path: Path, target: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize("planted", ["segments", "readers", "codec", ".lock", SEG, f"{SEG}/residuals", "manifest.json"])
def test_planted_symlinks_are_refused_never_followed(sandbox, planted):
    """A writer's garbage collection, a delete, a lease or a read never goes through a planted symlink."""
    root, outside = sandbox
    (outside / "victim" / "seg-000077").mkdir()  # garbage-looking entries a GC through the link would remove
    (outside / "victim" / "seg-000001.000003.del").write_bytes(b"x")
    (root / "readers").mkdir(exist_ok=True)
    _replace_with_link(root / planted, outside / ("created" if planted == ".lock" else "victim"))
    before = snapshot(root.parent)
    refused(exercise, str(root), words=("refused",))
    assert snapshot(root.parent) == before
    assert not (outside / "created").exists()


def test_future_segment_symlink_is_removed_not_followed(sandbox):
    """A link named like the next commit's segment is garbage: the writer unlinks it and writes a real directory."""
    root, outside = sandbox
    (root / "segments" / "seg-000003").symlink_to(outside / "victim")
    (root / "segments" / "seg-000004.000004.del").symlink_to(outside / "file.bin")
    before = snapshot(root.parent)

    def add_one(path):
        with store.Store.open(path, writable=True) as s:
            s.add(["new"], [np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)])

    assert run_limited(add_one, root).kind == "ok"
    assert snapshot(root.parent) == before
    assert (root / "segments" / "seg-000003").is_dir() and not (root / "segments" / "seg-000003").is_symlink()
    assert not (root / "segments" / "seg-000004.000004.del").exists()


def test_gc_leaves_unknown_names_alone(sandbox):
    root, _ = sandbox
    (root / "segments" / "notes.txt").write_text("mine")
    (root / "segments" / "seg-000099.tmp").mkdir()
    with store.Store.open(root, writable=True):
        pass
    assert (root / "segments" / "notes.txt").exists() and (root / "segments" / "seg-000099.tmp").is_dir()


# --------------------------------------------------------------------------- 3. special files


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("rel", ["manifest.json", f"{SEG}/zarr.json", f"{SEG}/doc_offsets/zarr.json",
                                 f"{SEG}/doc_offsets/c/0", f"{SEG}/codes/c/0", "codec/centroids/c/0/0"])
def test_fifo_in_place_of_a_file_is_refused_not_waited_on(sandbox, rel):
    root, _ = sandbox
    _fifo(root / rel)
    refused(exercise, str(root), words=("not a regular file",), timeout=20)


def test_special_bitmap_and_lease_neither_hang_nor_exhaust(sandbox):
    root, _ = sandbox
    with store.Store.open(root, writable=True) as s:
        s.delete([s.ids()[0]])
    bitmap = root / "segments" / manifest(root)["segments"][0]["deletes"]
    bitmap.unlink()
    bitmap.symlink_to("/dev/zero")
    refused(exercise, str(root), timeout=20, address_space=256 * MB)
    bitmap.unlink()
    os.mkfifo(bitmap)
    refused(exercise, str(root), words=("not a regular file",), timeout=20)


def test_fifo_lease_does_not_hang_a_writer(sandbox):
    root, _ = sandbox
    (root / "readers").mkdir()
    os.mkfifo(root / "readers" / "1-000000000000.lease")
    assert run_limited(exercise, str(root), timeout=20).kind == "ok"


# --------------------------------------------------------------------------- 4. allocation bombs


def test_edited_shapes_are_checked_before_allocating(sandbox):
    root, _ = sandbox
    edit_zarr(root, f"{SEG}/doc_offsets", lambda m: m.update(shape=[10**12]))
    refused(read_op, root, words=("disagrees with the manifest",), address_space=256 * MB)


@pytest.mark.parametrize("shard_rows", [None, 16])
def test_token_count_forged_everywhere_is_bounded_by_the_files(sandbox, shard_rows):
    """2^40 tokens claimed by the manifest, doc_offsets (gzip + CRC) and both zarr.json: refused at open,
    before anything is sized by the shard count (with shards of 16 rows, 2^36 shards a token array)."""
    root, _ = sandbox
    doc = manifest(root)
    t = 1 << 40
    doc["segments"][0]["tokens"] = t
    write_manifest_doc(root, doc)
    n = doc["segments"][0]["documents"]
    offs = np.linspace(0, t, n + 1).astype("<i8")
    (root / SEG / "doc_offsets/c/0").write_bytes(gzip_chunk(offs.tobytes()))
    def forge(m):
        m["shape"][0] = t
        if shard_rows:
            m["chunk_grid"]["configuration"]["chunk_shape"][0] = shard_rows
            m["codecs"][0]["configuration"]["chunk_shape"][0] = shard_rows

    for arr in ("codes", "residuals"):
        edit_zarr(root, f"{SEG}/{arr}", forge)
    refused(read_op, root, words=("shard file missing",), address_space=256 * MB, timeout=20)


def test_shard_rows_out_of_bounds_refused(sandbox):
    root, _ = sandbox
    edit_zarr(root, f"{SEG}/residuals", lambda m: m["chunk_grid"]["configuration"]["chunk_shape"].__setitem__(0, 1 << 30))
    refused(read_op, root, words=("residuals/zarr.json",), address_space=256 * MB)


def test_verify_does_not_walk_absent_chunks_of_an_edited_shape(sandbox):
    root, _ = sandbox
    edit_zarr(root, f"{SEG}/id_bytes", lambda m: m.update(shape=[10**12], chunk_grid={
        "name": "regular", "configuration": {"chunk_shape": [1]}}))
    refused(read_op, root, timeout=20, address_space=256 * MB)


# --------------------------------------------------------------------------- 5. silently wrong answers


def test_document_count_off_by_one_is_refused(sandbox):
    root, _ = sandbox
    doc = manifest(root)
    doc["segments"][0]["documents"] -= 1
    write_manifest_doc(root, doc)
    refused(read_op, root, words=("doc_offsets",))


def test_negative_first_offset_is_refused(sandbox):
    root, _ = sandbox
    with store.Store.open(root) as s:
        offs = s.segments[0].doc_offsets.copy()
    offs[0] = -1
    (root / SEG / "doc_offsets/c/0").write_bytes(gzip_chunk(offs.astype("<i8").tobytes()))
    refused(read_op, root, words=("start at 0",))


def test_edited_dtype_is_refused(sandbox):
    root, _ = sandbox
    edit_zarr(root, f"{SEG}/id_bytes", lambda m: m.update(data_type="int8"))
    refused(read_op, root, words=("data_type",))


def test_id_table_must_end_where_its_bytes_end(sandbox):
    root, _ = sandbox
    with store.Store.open(root) as s:
        offs, _ = s.segments[0].id_table()
    offs = offs.copy()
    offs[-1] += 3
    (root / SEG / "id_offsets/c/0").write_bytes(gzip_chunk(offs.astype("<i8").tobytes()))
    refused(read_op, root, words=("id_bytes",))


def test_inverted_list_naming_a_missing_document_is_refused(sandbox):
    root, _ = sandbox
    with store.Store.open(root) as s:
        offsets, docs = s.segments[0].ivf()
        n = s.segments[0].n_docs
    raw = gzip.decompress((root / SEG / "ivf_docs/c/0").read_bytes()[:-4])
    deltas = np.frombuffer(raw, "<u4").copy()
    first = int(np.flatnonzero(np.diff(offsets))[0])
    deltas[offsets[first]] = n + 5
    (root / SEG / "ivf_docs/c/0").write_bytes(gzip_chunk(deltas.tobytes()))
    refused(read_op, root, words=("inverted list",))


def test_deleted_count_must_match_the_bitmap(sandbox):
    root, _ = sandbox
    with store.Store.open(root, writable=True) as s:
        s.delete([s.ids()[0]])
    doc = manifest(root)
    doc["segments"][0]["deleted"] = 2
    write_manifest_doc(root, doc)
    refused(store.Store.open, root, words=(".del",))


# --------------------------------------------------------------------------- 6. error hygiene


@pytest.mark.parametrize("rel", ["manifest.json", f"{SEG}/zarr.json", f"{SEG}/codes/zarr.json"])
def test_deeply_nested_json_is_corruption_not_recursion(sandbox, rel):
    root, _ = sandbox
    (root / rel).write_bytes(b"[" * 200_000 + b"]" * 200_000)
    refused(read_op, root, words=("not valid JSON",))


@pytest.mark.parametrize("field, value", [("documents", "12"), ("tokens", -1), ("generation", True),
                                          ("dim", 10**30), ("segments", {"a": 1}), ("nbits", 3)])
def test_manifest_field_types_and_ranges(sandbox, field, value):
    root, _ = sandbox
    doc = manifest(root)
    if field in ("documents", "tokens"):
        doc["segments"][0][field] = value
    else:
        doc[field] = value
    write_manifest_doc(root, doc)
    refused(store.Store.open, root, words=("manifest.json",))


@pytest.mark.parametrize("kind", [["pq"], {"a": 1}])
def test_unhashable_codec_kind_is_a_store_error(sandbox, kind):
    root, _ = sandbox
    doc = manifest(root)
    doc["codec"]["kind"] = kind
    write_manifest_doc(root, doc)
    refused(store.Store.open, root, words=("codec",))


def test_non_ascii_digit_shard_name_is_a_store_error(sandbox):
    """'\u00b2' and '\u0663' pass str.isdigit(): a file so named under c/ must neither crash int() nor count as a shard."""
    root, _ = sandbox
    codes = next((root / "segments").glob("seg-*/codes/c"))
    for f in codes.iterdir():
        f.unlink()
    (codes / "\u00b2").write_bytes(b"x")
    (codes / "\u0663").write_bytes(b"x")
    refused(read_op, root, words=("shard file missing",))


@pytest.mark.parametrize("command", ["verify", "info"])
def test_cli_reports_a_hostile_store_in_one_line(sandbox, command):
    root, _ = sandbox
    edit_zarr(root, f"{SEG}/doc_offsets", lambda m: m.update(data_type="float64"))
    (root / "manifest.json").unlink()
    os.mkfifo(root / "manifest.json")
    proc = subprocess.run([sys.executable, "-m", "lodestore.cli", command, str(root)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    if command == "info":
        assert len(proc.stderr.strip().splitlines()) == 1 and "not a regular file" in proc.stderr


def _forge_code_beyond_k(root: Path) -> None:
    from lodestore.store.testing.hostile import fix_crcs

    rel = f"{SEG}/codes/c/0"
    data = bytearray((root / rel).read_bytes())
    data[0:2] = (40000).to_bytes(2, "little")  # K is 32; the first row's code
    (root / rel).write_bytes(fix_crcs(root, rel, bytes(data)))


def _forge_documents(root: Path) -> None:
    doc = manifest(root)
    doc["segments"][1]["documents"] += 1
    write_manifest_doc(root, doc)


def _forge_id_dtype(root: Path) -> None:
    edit_zarr(root, f"{SEG}/id_bytes", lambda m: m.update(data_type="uint16"))


@pytest.mark.parametrize("forge", [_forge_code_beyond_k, _forge_documents, _forge_id_dtype],
                         ids=["code >= K", "documents + 1", "id_bytes dtype"])
def test_verify_reports_structural_forgeries(sandbox, forge):
    """Store.open succeeds (segments open lazily), but verify finds the forgery; reads refuse it."""
    root, _ = sandbox
    forge(root)

    def check(path):
        with store.Store.open(path) as s:
            report = s.verify()
        assert not report.ok and report.failures, "verify said OK"
        read_op(path)

    refused(check, root)


def _forge_ivf_pairs(root: Path, pairs: int) -> None:
    """ivf_offsets' last entry (the segment's pair count) set to `pairs`, re-compressed and its CRC recomputed:
    a chunk that decodes and is still a valid CSR."""
    import gzip

    from lodestore.store.testing.hostile import fix_crcs

    rel = f"{SEG}/ivf_offsets/c/0"
    raw = bytearray(gzip.decompress((root / rel).read_bytes()[:-4]))  # codecs: bytes, gzip, crc32c
    raw[-8:] = int(pairs).to_bytes(8, "little")
    (root / rel).write_bytes(fix_crcs(root, rel, gzip.compress(bytes(raw)) + b"\0" * 4))


def test_a_forged_ivf_pair_count_is_refused_before_anything_is_sized_by_it(sandbox):
    """A reader sizing the merged inverted lists by ivf_offsets (the engine does) gets a CorruptStoreError
    naming the array, not an allocation of 2^40 pairs: checked against the segment's tokens."""
    root, _ = sandbox
    _forge_ivf_pairs(root, 1 << 40)

    def size(path):
        with store.Store.open(path) as s:
            for seg in s.segments:
                seg.ivf_size()

    detail = refused(size, root, words=("ivf_offsets", "pairs"))
    assert "tokens" in detail


def test_an_honest_ivf_pair_count_is_what_the_lists_hold(sandbox):
    root, _ = sandbox
    with store.Store.open(root) as s:
        for seg in s.segments:
            offsets, docs = seg.ivf()
            assert seg.ivf_size() == len(docs) == offsets[-1] <= seg.n_tokens
