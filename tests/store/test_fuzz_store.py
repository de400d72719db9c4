"""Fuzzing store directories: CRC-correct damage of every file, zarr.json and manifest fields, special files.

Each drawn case copies a small store (two segments, payloads, a deletion) into a
sandbox beside an `outside/` tree, applies 1-3 mutations (store/testing/mutate.py),
and runs open / ids / get / payloads / inverted lists / verify / stats and a
writer's open + delete in a child process with a time and address-space limit
(store/testing/hostile.py). The case passes when the child finished or raised a
StoreError (CorruptStoreError, UnsupportedFormatError): no other exception, no
signal, no hang, no memory blow-up; and nothing outside the store changed.
The suite runs a bounded number of examples (the hypothesis profile's, at most 15);
tools/fuzz_store.py runs thousands.
"""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lodestore.store.testing.hostile import exercise, make_outside, run_limited, snapshot
from lodestore.store.testing.mutate import HOSTILE_NAMES, PLANTS, SPECIALS, apply, build_template

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, -1, 2**31, 2**40 + 1, 65536])
    | st.floats(allow_nan=False) | st.text(max_size=8) | st.sampled_from(["float64", "int8", "zstd", "blosc", "../x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.floats(0, 0.999), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.floats(0, 0.999), st.none()),
    st.tuples(st.just("extend"), st.integers(0, 10**6), st.just(0.0), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("json"), st.integers(0, 10**6), st.floats(0, 0.999), json_values),
    st.tuples(st.just("deep-json"), st.integers(0, 10**6), st.just(0.0), st.sampled_from([50, 100_000])),
    st.tuples(st.just("special"), st.integers(0, 10**6), st.just(0.0), st.sampled_from(SPECIALS)),
    st.tuples(st.just("plant"), st.just(0), st.just(0.0), st.sampled_from(PLANTS)),
    st.tuples(st.just("bomb"), st.integers(0, 10**6), st.just(0.0), st.sampled_from([1, 16])),
    st.tuples(st.just("name"), st.integers(0, 10**6), st.just(0.0), st.sampled_from(HOSTILE_NAMES)),
)


@pytest.fixture(scope="module")
def fuzz_template(tmp_path_factory):
    return build_template(tmp_path_factory.mktemp("fuzz") / "store")


def run_case(template, sandbox, muts):
    """Apply `muts` to a copy of `template` in `sandbox`; the child's Outcome and whether anything outside changed."""
    target = sandbox / "store"
    shutil.copytree(template, target, symlinks=True)
    outside = make_outside(sandbox)
    done = [apply(target, outside, m) for m in muts]
    before = snapshot(sandbox)
    outcome = run_limited(exercise, str(target), timeout=30)
    return outcome, snapshot(sandbox) != before, done


@settings(max_examples=min(settings().max_examples, 15), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(muts=st.lists(mutations, min_size=1, max_size=3))
def test_damaged_store_is_read_or_refused(fuzz_template, tmp_path_factory, muts):
    sandbox = tmp_path_factory.mktemp("case")
    try:
        outcome, escaped, done = run_case(fuzz_template, sandbox, muts)
        assert outcome.acceptable, f"{done}: {outcome.kind}: {outcome.detail}"
        assert not escaped, f"{done}: something outside the store changed"
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


def test_undamaged_template_reads_ok(fuzz_template, tmp_path):
    """The fuzzer's baseline: the intact store passes every operation (so a refusal is the damage's doing)."""
    outcome, escaped, _ = run_case(fuzz_template, tmp_path, [])
    assert outcome.kind == "ok", outcome.detail
    assert not escaped
