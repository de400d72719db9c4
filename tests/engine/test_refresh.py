"""Searchers and writers at the same time: a Searcher answers from the generation it opened
(its lease keeps the files) until refresh(); every answer is the answer of one generation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lodestore import store
from lodestore.engine import Searcher, exhaustive_search

ROOT = Path(__file__).resolve().parents[2]
DIM, K = 16, 16
ALL = 1000  # k larger than any store here: a search returns every live document, best first

# One commit per step, deterministic: the test replays the same steps to know every generation.
STEPS = textwrap.dedent("""
    import numpy as np

    def step(s, j):
        rng = np.random.default_rng(100 + j)
        if j % 3 == 0:
            s.add([f"n{j}", f"m{j}"], [rng.standard_normal((int(rng.integers(3, 12)), DIM)) for _ in range(2)])
        elif j % 3 == 1:
            s.delete([f"b{j}"])
        else:
            s.compact()
""").replace("DIM", str(DIM))
N_STEPS = 12

WRITER = STEPS + textwrap.dedent("""
    import sys, time
    from lodestore import store
    with store.Store.open(sys.argv[1], writable=True) as s:
        print("ready", flush=True)
        sys.stdin.readline()
        for j in range(N_STEPS):
            step(s, j)
            time.sleep(0.05)
    print("done", flush=True)
""").replace("N_STEPS", str(N_STEPS))


def make_base(path: Path) -> None:
    rng = np.random.default_rng(0)
    with store.Store.create(path, dim=DIM, nbits=2, num_centroids=K) as s:
        s.add([f"b{i}" for i in range(20)], [rng.standard_normal((int(n), DIM)) for n in rng.integers(3, 12, 20)])


def queries() -> np.ndarray:
    return np.random.default_rng(42).standard_normal((3, 5, DIM)).astype(np.float32)


def searcher(path) -> Searcher:
    """Every live document is a candidate (all centroids probed); rows read from disk (budget 1 byte)."""
    return Searcher(path, memory_budget=1, nprobe=K, ndocs=4 * ALL)


def same_hits(got, want) -> bool:
    return all([i for i, _ in g] == [i for i, _ in w] and np.allclose([x for _, x in g], [x for _, x in w], atol=1e-4)
               for g, w in zip(got, want)) and len(got) == len(want)


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "s"
    make_base(path)
    return path


def replay(base: Path, tmp: Path) -> dict[int, list]:
    """generation -> the exhaustive answer to queries(), replaying the writer's steps in this process."""
    path = tmp / "replay"
    shutil.copytree(base, path)
    namespace: dict = {}
    exec(STEPS, namespace)
    answers = {}
    with store.Store.open(path, writable=True) as s:
        answers[s.generation] = exhaustive_search(s, list(queries()), k=ALL)
        for j in range(N_STEPS):
            namespace["step"](s, j)
            answers[s.generation] = exhaustive_search(s, list(queries()), k=ALL)
    return answers


def test_searcher_keeps_its_generation_until_refresh(base, tmp_path):
    answers = replay(base, tmp_path)
    s = searcher(base)
    first = s.search(queries(), k=ALL)
    assert same_hits(first, answers[1])
    namespace: dict = {}
    exec(STEPS, namespace)
    with store.Store.open(base, writable=True) as w:
        for j in range(N_STEPS):  # adds, deletes and compactions: generation 1's files are long unnamed
            namespace["step"](w, j)
        assert same_hits(s.search(queries(), k=ALL), first) and s.generation == 1
        assert "seg-000001" in os.listdir(base / "segments")  # kept for the searcher
        assert s.refresh() is True
        assert s.generation == 1 + N_STEPS and s.stats()["generation"] == 1 + N_STEPS
        assert same_hits(s.search(queries(), k=ALL), answers[1 + N_STEPS])
        assert s.refresh() is False
        w.delete(["b0"])  # the next commit collects what generation 1 named
        assert "seg-000001" not in os.listdir(base / "segments")
        assert same_hits(s.search(queries(), k=ALL), answers[1 + N_STEPS])  # still generation 13's answer
        s.refresh()
        assert "b0" not in {i for i, _ in s.search(queries()[0], k=ALL)}
    s.close()
    assert not (base / "readers").exists()


def test_refresh_follows_a_writers_own_handle(base):
    with store.Store.open(base, writable=True) as w:
        s = Searcher(w, memory_budget=1, nprobe=K, ndocs=4 * ALL)
        w.delete(["b1"])
        w.compact()
        assert "b1" in {i for i, _ in s.search(queries()[0], k=ALL)}
        assert s.refresh() and s.generation == 3
        assert "b1" not in {i for i, _ in s.search(queries()[0], k=ALL)}
        s.close()


def test_refresh_to_an_empty_generation_keeps_the_old_one(base):
    s = searcher(base)
    with store.Store.open(base, writable=True) as w:
        w.delete(w.ids())
        assert s.refresh() and s.search(queries()[0], k=ALL) == []  # every document deleted: no hits
        w.compact()  # and now no segment at all
    with pytest.raises(ValueError, match="no documents"):
        s.refresh()
    assert s.generation == 2 and s.search(queries()[0], k=ALL) == []
    s.close()


def test_searches_during_commits_each_match_one_generation(base, tmp_path):
    """A writer process adds, deletes and compacts while this process searches: a refreshing
    Searcher, a Searcher that never refreshes, and fresh read-only opens with exhaustive
    search. Every answer equals the answer of the generation it reports."""
    answers = replay(base, tmp_path)
    assert len(answers) == N_STEPS + 1
    pinned = searcher(base)
    moving = searcher(base)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(base)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        while writer.poll() is None:
            moving.refresh()
            seen.append((moving.generation, moving.search(list(queries()), k=ALL)))
            seen.append((1, pinned.search(list(queries()), k=ALL)))
            with store.Store.open(base) as r:
                seen.append((r.generation, exhaustive_search(r, list(queries()), k=ALL)))
        assert writer.returncode == 0, writer.stderr.read()
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait(timeout=60)
        for f in (writer.stdin, writer.stdout, writer.stderr):
            f.close()
    moving.refresh()
    seen.append((moving.generation, moving.search(list(queries()), k=ALL)))
    for generation, hits in seen:
        assert same_hits(hits, answers[generation]), f"an answer that is not generation {generation}'s"
    assert seen[-1][0] == 1 + N_STEPS
    assert len({g for g, _ in seen}) >= 2
    pinned.close()
    moving.close()
