"""Per-document payloads: stored with the segment, read back exactly, checksummed like everything else."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lodestore.store import CorruptStoreError, Store
from lodestore.store._payloads import PAYLOAD_CHUNK

DIM = 8


def _docs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(rng.integers(1, 6)), DIM)).astype(np.float32) for _ in range(n)]


def _store(path: Path, payloads, n: int | None = None) -> Store:
    n = len(payloads) if payloads is not None else n
    store = Store.create(path, dim=DIM, num_centroids=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store.add([f"d{i}" for i in range(n)], _docs(n), payloads=payloads)
    return store


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(max_size=3 * PAYLOAD_CHUNK // 2), min_size=1, max_size=6), st.data())
def test_payloads_round_trip_across_chunk_boundaries(tmp_path_factory, payloads: list[bytes], data) -> None:
    path = tmp_path_factory.mktemp("p") / "s"
    _store(path, payloads).close()
    with Store.open(path) as store:
        ids = data.draw(st.lists(st.sampled_from([f"d{i}" for i in range(len(payloads))]), min_size=1))
        assert store.payloads(ids) == [payloads[int(i[1:])] for i in ids]
        assert store.verify().ok


def test_segments_without_payloads_give_none(tmp_path: Path) -> None:
    with _store(tmp_path / "s", None, n=3) as store:
        assert store.payloads(["d0", "d2"]) == [None, None]
        assert not (tmp_path / "s" / "segments" / "seg-000001" / "payload_bytes").exists()
        with pytest.raises(KeyError, match="no documents with ids \\['nope'\\]"):
            store.payloads(["nope"])


@pytest.mark.parametrize("payloads, message", [
    ([b"a"], "got 1 payloads for 2 documents"),
    ([b"a", "text"], "payload 1 is str, not bytes"),
    (b"ab", "one bytes object per document"),
])
def test_bad_payloads_rejected(tmp_path: Path, payloads, message: str) -> None:
    with Store.create(tmp_path / "s", dim=DIM) as store:
        with pytest.raises(ValueError, match=message):
            store.add(["a", "b"], _docs(2), payloads=payloads)
        assert store.generation == 0


def test_corrupt_payload_chunk_is_reported(tmp_path: Path) -> None:
    payloads = [bytes([i % 251]) * 50_000 for i in range(4)]  # 200 KB: many chunks
    _store(tmp_path / "s", payloads).close()
    first_of_d2 = 100_000 // PAYLOAD_CHUNK
    chunk = tmp_path / "s" / "segments" / "seg-000001" / "payload_bytes" / "c" / str(first_of_d2)
    raw = bytearray(chunk.read_bytes())
    raw[5] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with Store.open(tmp_path / "s") as store:
        assert store.payloads(["d0"]) == [payloads[0]]  # chunk 0 only: the damage is not met
        with pytest.raises(CorruptStoreError, match=f"payload_bytes/c/{first_of_d2}: checksum mismatch"):
            store.payloads(["d2"])
        report = store.verify()
        assert not report.ok and any(f"payload_bytes/c/{first_of_d2}" in f for f in report.failures)


def test_payloads_survive_other_commits(tmp_path: Path) -> None:
    with _store(tmp_path / "s", [b"first", b"second"]) as store:
        store.add(["e0"], _docs(1, seed=3), payloads=[b"third"])
        store.delete(["d0"])
        assert store.payloads(["d1", "e0"]) == [b"second", b"third"]
