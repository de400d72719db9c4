"""compact(), reader leases and garbage collection, upsert, unknown-id deletes, the drift figure."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lodestore import store
from lodestore.store import _compact
from lodestore.store._leases import READERS_DIR, live_leases
from lodestore.store._keywords import KEYWORD_ARRAYS
from lodestore.store._payloads import PAYLOAD_ARRAYS
from lodestore.store._segment import SMALL_ARRAYS, TOKEN_ARRAYS, SegmentWriter

ROOT = Path(__file__).resolve().parents[2]


def content(s: store.Store) -> dict[str, np.ndarray]:
    return {i: s.get(i) for i in s.ids()}


def rows(s: store.Store) -> dict[str, tuple[bytes, bytes]]:
    """Each live document's stored rows, as bytes: codes and residuals exactly as on disk."""
    out = {}
    for doc_id in s.ids():
        si, local = s._ids_index()[doc_id]
        codes, residuals, _, _ = s.segments[si].read_docs(np.array([local]))
        out[doc_id] = (codes.tobytes(), residuals.tobytes())
    return out


def segment_files(root: Path) -> set[str]:
    return {p.name for p in (root / "segments").iterdir()}


def assert_equal_content(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# --------------------------------------------------------------------------- compact


def test_compact_copies_rows_byte_for_byte_and_drops_deleted(store_copy, template_corpus, monkeypatch):
    monkeypatch.setattr(_compact, "COPY_TOKENS", 50)  # many copy steps
    ids = template_corpus.ids
    with store.Store.open(store_copy, writable=True) as s:
        s.delete([ids[0], ids[7], ids[30], ids[-1]])
        before, before_rows = content(s), rows(s)
        tokens = sum(len(t) for t in before.values())
        assert s.compact() == 4
        assert [e.name for e in s.manifest.segments] == ["seg-000004"]
        e = s.manifest.segments[0]
        assert (e.documents, e.tokens, e.deletes, e.deleted) == (len(before), tokens, None, 0)
        assert_equal_content(content(s), before)
        assert rows(s) == before_rows  # no decode / re-encode
        assert s.verify().ok
        assert segment_files(store_copy) == {"seg-000004"}  # no reader: the old files went at once
    with store.Store.open(store_copy) as r:
        assert_equal_content(content(r), before)
        assert r.stats()["deleted"] == 0


def test_compact_with_nothing_to_do_commits_nothing(tmp_path, template_corpus):
    with store.Store.create(tmp_path / "s", dim=32, num_centroids=16) as s:
        assert s.compact() == 0  # empty store
        s.add(template_corpus.ids[:5], template_corpus.docs[:5])
        assert s.compact() == 1  # one segment, no deletions
        s.add(template_corpus.ids[5:8], template_corpus.docs[5:8])
        assert s.compact() == 3  # two segments: merged
        assert s.compact() == 3


def test_compact_of_an_all_deleted_store_keeps_the_codec(store_copy, template_corpus, clustered_corpus):
    with store.Store.open(store_copy, writable=True) as s:
        s.delete(template_corpus.ids)
        codec = s.codec
        assert s.compact() == 4
        assert s.manifest.segments == () and s.manifest.codec is not None
        assert len(s) == 0 and s.ids() == [] and s.verify().ok
        assert segment_files(store_copy) == set()
        extra = clustered_corpus(3, 32, seed=5, prefix="x")
        s.add(extra.ids, extra.docs)  # no retraining: the codec is the same
        assert s.codec == codec and s.ids() == extra.ids
    with store.Store.open(store_copy) as r:
        assert r.ids() == extra.ids


def test_compact_then_add_delete_compact(store_copy, template_corpus, clustered_corpus):
    ids = template_corpus.ids
    extra = clustered_corpus(4, 32, seed=6, prefix="x")
    with store.Store.open(store_copy, writable=True) as s:
        s.delete(ids[:3])
        s.compact()
        s.add(extra.ids, extra.docs)
        s.delete([ids[10], extra.ids[1]])
        before = content(s)
        s.compact()
        assert_equal_content(content(s), before)
        assert len(s.manifest.segments) == 1 and s.verify().ok


def test_copy_documents_knows_every_column_of_a_segment():
    """Tripwire: a new per-document column (e.g. a text payload) must be carried by
    store/_compact.py copy_documents, or compaction silently drops it. Update copy_documents,
    then this list."""
    assert list(inspect.signature(SegmentWriter.append).parameters) == ["self", "ids", "doclens", "codes", "residuals", "payloads",
                                                                      "metadata", "keywords"]
    assert TOKEN_ARRAYS == ("codes", "residuals")
    assert SMALL_ARRAYS == ("doc_offsets", "ivf_offsets", "ivf_docs", "id_offsets", "id_bytes")
    assert PAYLOAD_ARRAYS == ("payload_offsets", "payload_bytes")
    assert KEYWORD_ARRAYS == ("keyword_term_offsets", "keyword_term_bytes", "keyword_doc_offsets", "keyword_terms",
                              "keyword_tfs")


def test_compaction_carries_payloads(tmp_path):
    import warnings

    rng = np.random.default_rng(5)
    docs = [rng.normal(size=(int(rng.integers(2, 6)), 8)).astype(np.float32) for _ in range(12)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with store.Store.create(tmp_path / "s", dim=8, num_centroids=4) as s:
            s.add([f"a{i}" for i in range(6)], docs[:6], payloads=[f"text {i}".encode() for i in range(6)])
            s.add([f"b{i}" for i in range(6)], docs[6:])  # no payloads in this segment
            s.delete(["a1", "b2"])
            s.compact()
            assert len(s.manifest.segments) == 1 and s.verify().ok
            assert s.payloads(["a0", "a5", "b0"]) == [b"text 0", b"text 5", b""]


# --------------------------------------------------------------------------- leases and garbage


def test_a_reader_keeps_its_generation_through_compaction(store_copy, template_corpus):
    ids = template_corpus.ids
    with store.Store.open(store_copy, writable=True) as w:
        w.delete([ids[3]])
        reader = store.Store.open(store_copy)  # generation 3: seg-000001, seg-000002, seg-000001.000003.del
        old_files = segment_files(store_copy)
        expected = content(reader)
        w.compact()
        w.delete([ids[4]])  # another commit: still pinned
        assert old_files <= segment_files(store_copy)
        store.Store.open(store_copy, writable=False).close()
        assert_equal_content(content(reader), expected)  # every file generation 3 names is still there
        assert reader.verify().ok
        reader.close()
        assert old_files <= segment_files(store_copy)  # removed by the next commit, not by a reader
        w.delete([ids[5]])
        assert segment_files(store_copy) == {"seg-000004", "seg-000004.000006.del"}


def test_a_lease_pins_only_the_files_of_its_generation(store_copy, template_corpus):
    ids = template_corpus.ids
    with store.Store.open(store_copy, writable=True) as w:
        w.delete([ids[0]])  # gen 3: seg-000001.000003.del
        w.delete([ids[1]])  # gen 4: seg-000001.000004.del (gen 3's bitmap collected: no reader)
        assert "seg-000001.000003.del" not in segment_files(store_copy)
        with store.Store.open(store_copy) as r:  # gen 4
            w.delete([ids[2]])  # gen 5: gen 4's bitmap stays (r uses it)
            assert "seg-000001.000004.del" in segment_files(store_copy)
            w.delete([ids[3]])  # gen 6: gen 5's bitmap is nobody's: collected
            assert "seg-000001.000005.del" not in segment_files(store_copy)
            assert "seg-000001.000004.del" in segment_files(store_copy)
            assert r.ids() == ids[2:]
        w.delete([ids[40]])  # gen 7: r is gone, so is gen 4's bitmap
        assert segment_files(store_copy) == {"seg-000001", "seg-000002", "seg-000001.000006.del", "seg-000002.000007.del"}


def test_lease_files_come_and_go(store_copy):
    readers = store_copy / READERS_DIR
    r1 = store.Store.open(store_copy)
    r2 = store.Store.open(store_copy)
    assert len(list(readers.glob("*.lease"))) == 2
    lease = r1.lease()
    assert len(list(readers.glob("*.lease"))) == 3
    with store.Store.open(store_copy, writable=True):
        assert sorted(g for g, _ in live_leases(store_copy)) == [2, 2, 2]
    lease.release()
    r1.close()
    r2.close()
    assert not readers.exists()  # the last reader removes the directory too
    with pytest.raises(store.StoreError, match="closed"):
        r1.lease()


def test_a_killed_readers_lease_is_stale_and_removed(store_copy, template_corpus):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, store
            r = store.Store.open(sys.argv[1])
            print("open", flush=True)
            sys.stdin.readline()
        """), str(store_copy)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with store.Store.open(store_copy, writable=True) as w:
            w.delete([template_corpus.ids[0]])
            w.compact()
            assert "seg-000001" in segment_files(store_copy)  # the live reader pins generation 2
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=60)
            assert len(list((store_copy / READERS_DIR).glob("*.lease"))) == 1  # its lease file is left
            w.delete([template_corpus.ids[1]])  # the next commit finds the lease stale
            assert segment_files(store_copy) == {"seg-000004", "seg-000004.000005.del"}
            assert not list((store_copy / READERS_DIR).glob("*.lease"))
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=60)
        holder.stdin.close()
        holder.stdout.close()


def test_an_unstamped_lease_pins_everything_but_crash_leftovers(store_copy, template_corpus):
    """A reader between making its lease visible and reading the manifest: nothing it might
    read may go, but a half-written segment of a commit that never happened may."""
    from lodestore.store._leases import Lease

    lease = Lease.acquire(store_copy)  # visible, locked, no generation yet
    try:
        with store.Store.open(store_copy, writable=True) as w:
            w.delete([template_corpus.ids[0]])
            w.compact()
            (store_copy / "segments" / "seg-000009").mkdir()  # a crash leftover of a future commit
            w.delete([template_corpus.ids[1]])
            files = segment_files(store_copy)
            assert {"seg-000001", "seg-000002", "seg-000001.000003.del"} <= files
            assert "seg-000009" not in files
    finally:
        lease.release()


# --------------------------------------------------------------------------- upsert and delete errors


def test_adding_a_live_id_is_an_error_and_changes_nothing(store_copy, template_corpus, clustered_corpus):
    ids = template_corpus.ids
    extra = clustered_corpus(2, 32, seed=9, prefix="x")
    with store.Store.open(store_copy, writable=True) as s:
        files = sorted(p.name for p in store_copy.rglob("*"))
        with pytest.raises(ValueError, match=f"{ids[3]!r} is already in the store.*upsert=True"):
            s.add([extra.ids[0], ids[3]], extra.docs)
        assert s.generation == 2 and sorted(p.name for p in store_copy.rglob("*")) == files


def test_upsert_replaces_in_one_commit(store_copy, template_corpus, clustered_corpus):
    ids = template_corpus.ids
    extra = clustered_corpus(3, 32, seed=9, prefix="x")
    with store.Store.open(store_copy, writable=True) as s:
        new_ids = [ids[3], ids[40], "brand-new"]
        assert s.add(new_ids, extra.docs, upsert=True) == 3
        assert s.ids() == [i for i in ids if i not in new_ids] + new_ids
        x = extra.docs[0] / np.linalg.norm(extra.docs[0], axis=1, keepdims=True)
        np.testing.assert_array_equal(s.get(ids[3]), s.codec.decode(*s.codec.encode(x)))  # the new vectors
        assert [e.deleted for e in s.manifest.segments] == [1, 1, 0]
        before = content(s)
        s.compact()
        assert_equal_content(content(s), before)
    with store.Store.open(store_copy) as r:
        assert_equal_content(content(r), before)


def test_upsert_of_new_ids_is_a_plain_add(store_copy, clustered_corpus):
    extra = clustered_corpus(2, 32, seed=9, prefix="x")
    with store.Store.open(store_copy, writable=True) as s:
        s.add(extra.ids, extra.docs, upsert=True)
        assert not any(e.deletes for e in s.manifest.segments)


def test_a_deleted_id_can_be_added_again(store_copy, template_corpus):
    ids, docs = template_corpus.ids, template_corpus.docs
    with store.Store.open(store_copy, writable=True) as s:
        s.delete([ids[5]])
        s.add([ids[5]], [docs[5]])
        s.compact()
        assert s.ids()[-1] == ids[5] and ids.count(ids[5]) == 1 and len(s) == len(ids)


def test_delete_of_unknown_ids_changes_nothing(store_copy, template_corpus):
    ids = template_corpus.ids
    with store.Store.open(store_copy, writable=True) as s:
        s.delete([ids[0]])
        files = sorted(p.name for p in store_copy.rglob("*"))
        for bad in (["nope"], [ids[1], "nope"], [ids[0]]):  # unknown, mixed, already deleted
            with pytest.raises(KeyError, match="unknown document ids.*nothing was deleted"):
                s.delete(bad)
        assert s.generation == 3 and ids[1] in s
        assert sorted(p.name for p in store_copy.rglob("*")) == files
        with pytest.raises(ValueError, match="not one string"):
            s.delete(ids[1])
        assert s.delete([ids[1], ids[1]]) == 4  # a repeated id is deleted once


# --------------------------------------------------------------------------- drift


def test_drift_figure_flags_documents_far_from_the_centroids(tmp_path, clustered_corpus):
    """Tokens like the training data: about 1% far. Tokens from elsewhere: many times that."""
    train = clustered_corpus(120, 32, seed=1, n_clusters=6, mean_len=30)
    same = clustered_corpus(60, 32, seed=1, n_clusters=6, mean_len=30, prefix="same")  # same clusters (same seed)
    rng = np.random.default_rng(5)
    other = [rng.standard_normal((30, 32)).astype(np.float32) for _ in range(20)]  # no cluster structure
    with store.Store.create(tmp_path / "s", dim=32, nbits=2, num_centroids=64) as s:
        s.add(train.ids, train.docs)
        s.add(same.ids, same.docs)
        s.add([f"other{i}" for i in range(20)], other)
        drift = s.stats()["drift"]
        first, second, third = (drift["segments"][f"seg-00000{g}"] for g in (1, 2, 3))
        assert drift["threshold"] > 0 and drift["expected_fraction"] == 0.01
        assert first < 0.05 and second < 0.05  # near the 1% of the training sample
        assert third > 0.5 and third > 10 * max(first, second)
        s.delete([f"other{i}" for i in range(10)])
        s.compact()
        merged = s.stats()["drift"]
        assert list(merged["segments"]) == ["seg-000005"]
        # estimated from the sources: the surviving half of the far segment dominates
        assert merged["far_tokens"] == pytest.approx(drift["far_tokens"] - third * 300, abs=2)


# --------------------------------------------------------------------------- CLI


def test_cli_compact_and_upsert(store_copy, template_corpus, tmp_path, capsys):
    from lodestore import cli

    ids = template_corpus.ids
    assert cli.main(["delete", str(store_copy), ids[0], ids[1]]) == 0
    assert cli.main(["compact", str(store_copy)]) == 0
    assert "committed generation 4" in capsys.readouterr().out
    assert cli.main(["compact", str(store_copy)]) == 0
    assert "nothing to compact" in capsys.readouterr().out
    bundle = tmp_path / "b"
    bundle.mkdir()
    np.save(bundle / "docs.npy", np.concatenate(template_corpus.docs[2:4]))
    np.save(bundle / "doclens.npy", np.array([len(d) for d in template_corpus.docs[2:4]]))
    (bundle / "ids.txt").write_text(f"{ids[2]}\n{ids[3]}\n")
    assert cli.main(["add", str(store_copy), "--embeddings", str(bundle), "--quiet"]) == 2
    assert "upsert" in capsys.readouterr().err
    assert cli.main(["add", str(store_copy), "--embeddings", str(bundle), "--quiet", "--upsert"]) == 0
    assert cli.main(["info", str(store_copy)]) == 0
    assert "far from every centroid" in capsys.readouterr().out
    assert cli.main(["verify", str(store_copy)]) == 0
