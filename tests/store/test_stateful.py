"""Random sequences of add (with and without upsert), delete, compact, reopen and long-lived
readers against a dict model (hypothesis RuleBasedStateMachine).

After every step the store holds exactly the model's documents in the model's order, each
decoding to the matrix it decoded to right after its add (compaction copies rows as they
are); every reader still open sees the snapshot of the generation it opened (its lease
keeps the files); and exhaustive search agrees with brute-force MaxSim over the model.
Examples: an eighth of the hypothesis profile's (5 by default, 125 with the nightly
profile); a 60-example, 25-step run passed on 2026-11-27.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lodestore import store
from lodestore.engine import exhaustive_search

DIM = 16


def maxsim_top(query: np.ndarray, docs: dict[str, np.ndarray], k: int) -> list[tuple[str, float]]:
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    scores = {i: float((d @ q.T).max(axis=0).sum()) for i, d in docs.items()}
    return sorted(scores.items(), key=lambda kv: -kv[1])[:k]


class StoreMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="lodestore-stateful-"))
        self.path = self.tmp / "s"
        self.store = store.Store.create(self.path, dim=DIM, nbits=2, num_centroids=16, seed=0)
        self.model: dict[str, np.ndarray] = {}  # live id -> decoded tokens, in store order
        self.readers: list[tuple[store.Store, dict[str, np.ndarray]]] = []
        self.serial = 0

    def _docs(self, n: int) -> list[np.ndarray]:
        rng = np.random.default_rng(self.serial)
        self.serial += 1
        return [rng.standard_normal((int(rng.integers(1, 9)), DIM)) for _ in range(n)]

    def _added(self, ids: list[str]) -> None:
        for i in ids:  # a replaced id moves to the end: its new copy is in the newest segment
            self.model.pop(i, None)
        for i in ids:
            self.model[i] = self.store.get(i)

    @initialize()
    def first_add(self):
        ids = [f"a{i}" for i in range(8)]
        self.store.add(ids, self._docs(8))
        self._added(ids)

    @rule(n=st.integers(1, 3), replace=st.lists(st.integers(0, 50), max_size=2, unique=True))
    def add(self, n, replace):
        live = list(self.model)
        old = [live[r % len(live)] for r in replace] if live else []
        old = list(dict.fromkeys(old))
        ids = old + [f"n{self.serial}-{j}" for j in range(n)]
        docs = self._docs(len(ids))
        if old:
            generation = self.store.generation
            try:
                self.store.add(ids, docs)
                raise AssertionError("adding a live id without upsert must fail")
            except ValueError as e:
                assert "already in the store" in str(e)
            assert self.store.generation == generation
        assert self.store.add(ids, docs, upsert=bool(old)) == self.store.generation
        self._added(ids)

    @precondition(lambda self: self.model)
    @rule(picks=st.lists(st.integers(0, 50), min_size=1, max_size=3), unknown=st.booleans())
    def delete(self, picks, unknown):
        live = list(self.model)
        ids = list(dict.fromkeys(live[p % len(live)] for p in picks))
        if unknown:
            generation = self.store.generation
            try:
                self.store.delete(ids + ["never-added"])
                raise AssertionError("deleting an unknown id must fail")
            except KeyError:
                pass
            assert self.store.generation == generation
        self.store.delete(ids)
        for i in ids:
            del self.model[i]

    @rule()
    def compact(self):
        self.store.compact()
        assert len(self.store.manifest.segments) <= 1
        assert all(e.deleted == 0 for e in self.store.manifest.segments)

    @rule()
    def reopen(self):
        self.store.close()
        self.store = store.Store.open(self.path, writable=True)  # collects garbage no reader needs

    @precondition(lambda self: len(self.readers) < 3)
    @rule()
    def open_reader(self):
        self.readers.append((store.Store.open(self.path), dict(self.model)))

    @precondition(lambda self: self.readers)
    @rule(which=st.integers(0, 2))
    def close_reader(self, which):
        reader, _ = self.readers.pop(which % len(self.readers))
        reader.close()

    @rule(seed=st.integers(0, 2**16), k=st.integers(1, 6))
    def search(self, seed, k):
        q = np.random.default_rng(seed).standard_normal((3, DIM)).astype(np.float32)
        want = maxsim_top(q, self.model, k)
        got = exhaustive_search(self.store, q, k=k) if self.model else []
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-4)

    @invariant()
    def matches_the_model(self):
        assert self.store.ids() == list(self.model)
        for i, tokens in self.model.items():
            np.testing.assert_array_equal(self.store.get(i), tokens)

    @invariant()
    def readers_keep_their_generation(self):
        for reader, snapshot in self.readers:
            assert reader.ids() == list(snapshot)
            for i, tokens in snapshot.items():
                np.testing.assert_array_equal(reader.get(i), tokens)

    def teardown(self):
        try:
            assert self.store.verify().ok
            for reader, _ in self.readers:
                reader.close()
            self.store.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


StoreMachine.TestCase.settings = settings(
    settings.default, max_examples=max(4, settings.default.max_examples // 8), stateful_step_count=15,
)
test_store_state_machine = StoreMachine.TestCase
