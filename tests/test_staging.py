"""The Index's scratch space, staging/ (FORMAT.md section 4): spills never land among the
segments, a writer killed mid-add leaves a spill that the next writable open removes and
nothing ever mistakes for a segment, and no symlink planted there is followed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from lodestore import Encoder, Index, Store, StoreError
from lodestore._staging import STAGING_DIR, clean_staging

DOCS = ["the cat sat on the mat", "stock markets fell sharply today", "quantum chromodynamics of gluons"]


@pytest.fixture(scope="module")
def enc() -> Encoder:
    return Encoder.default(intra_op_num_threads=2)


@pytest.fixture()
def index_path(tmp_path: Path, enc: Encoder) -> Path:
    path = tmp_path / "index"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Index.create(path, enc, num_centroids=4) as index:
            index.add(["a", "b"], DOCS[:2])
    return path


def _spill_leftover(root: Path, name: str = "spill-4242-2") -> Path:
    spill = root / STAGING_DIR / name
    spill.mkdir(parents=True)
    (spill / "docs.raw").write_bytes(b"\0" * 64)
    return spill


KILL_MID_ADD = textwrap.dedent("""
    import os, signal, sys, warnings
    import lodestore.index as index_module
    from lodestore import Index

    real = index_module._encode_to_bundle

    def encode_then_die(encoder, texts, out, *args):
        real(encoder, texts, out, *args)
        print(out, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # after the spill is written, before the commit

    index_module._encode_to_bundle = encode_then_die
    warnings.simplefilter("ignore")
    with Index.open(sys.argv[1], writable=True) as index:
        index.add(["c"], ["quantum chromodynamics of gluons"])
""")


def test_writer_killed_mid_add_leaves_a_spill_the_next_writer_removes(index_path: Path, enc: Encoder) -> None:
    proc = subprocess.run([sys.executable, "-c", KILL_MID_ADD, str(index_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr
    spill = Path(proc.stdout.strip())
    assert spill.parent == index_path / STAGING_DIR and spill.name.startswith("spill-")
    assert (spill / "docs.npy").is_file(), "the spill was written before the kill"
    assert sorted(p.name for p in (index_path / "segments").iterdir()) == ["seg-000001"]

    with Store.open(index_path) as store:  # a reader ignores staging/
        assert store.generation == 1 and len(store) == 2 and store.verify().ok
    with Index.open(index_path, enc) as index:  # a read-only open never deletes
        assert index.search(DOCS[0], k=1)[0].id == "a"
    assert spill.is_dir()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Index.open(index_path, enc, writable=True) as index:
            assert not (index_path / STAGING_DIR).exists(), "the leftover is removed at a writable open"
            index.add(["c"], [DOCS[2]])
            assert index.search(DOCS[2], k=1)[0].id == "c"
    assert not (index_path / STAGING_DIR).exists(), "an add leaves no staging/ behind"
    assert sorted(p.name for p in (index_path / "segments").iterdir()) == ["seg-000001", "seg-000002"]


def test_clean_staging_removes_only_spills(index_path: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "precious").mkdir(parents=True)
    _spill_leftover(index_path, "spill-1-2")
    (index_path / STAGING_DIR / "notes.txt").write_text("not ours")
    (index_path / STAGING_DIR / "spill-2-2").symlink_to(outside, target_is_directory=True)
    legacy = index_path / "segments" / ".spill-7-2"  # where the Index spilled before staging/
    legacy.mkdir()
    assert sorted(clean_staging(index_path)) == ["segments/.spill-7-2", "staging/spill-1-2"]
    assert sorted(p.name for p in (index_path / STAGING_DIR).iterdir()) == ["notes.txt", "spill-2-2"]
    assert (outside / "precious").is_dir() and not legacy.exists()
    assert clean_staging(index_path) == []


def test_symlinked_staging_is_refused_not_followed(index_path: Path, tmp_path: Path, enc: Encoder) -> None:
    outside = tmp_path / "outside"
    victim = outside / "spill-1-2"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("mine")
    (index_path / STAGING_DIR).symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match="staging is a symlink"):
        Index.open(index_path, enc, writable=True)
    (index_path / STAGING_DIR).unlink()
    with Index.open(index_path, enc, writable=True) as index:
        (index_path / STAGING_DIR).symlink_to(outside, target_is_directory=True)  # planted while open
        with pytest.raises(StoreError, match="staging is a symlink"):
            index.add(["c"], [DOCS[2]])
        assert index.store.generation == 1
    assert (victim / "keep.txt").read_text() == "mine" and sorted(os.listdir(outside)) == ["spill-1-2"]


def test_read_only_add_refused_before_encoding(index_path: Path, enc: Encoder) -> None:
    with Index.open(index_path, enc) as index:
        with pytest.raises(StoreError, match="read-only"):
            index.add(["c"], [DOCS[2]])
    assert not (index_path / STAGING_DIR).exists()
