"""Fuzz store directories for longer than the test suite does; print what happened.

    python tools/fuzz_store.py --cases 3000 [--seed 0] [--timeout 30] [--show 5]

Draws CRC-correct mutations (store/testing/mutate.py: byte flips, truncations,
extensions, zarr.json and manifest field edits, hostile names, special files,
planted symlinks, decompression bombs) of a small store, 1-3 per case, and runs
each case in a child process with a time and address-space limit
(store/testing/hostile.py). Prints a table: cases run, refused (a StoreError),
read fine, crashes (any other exception), signals, hangs, out-of-memory, escapes
(anything outside the store changed), wall time; exits 1 if any case was not
acceptable. tests/store/test_fuzz_store.py runs the same cases, briefly.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from lodestore.store.testing.hostile import exercise, make_outside, run_limited, snapshot
from lodestore.store.testing.mutate import HOSTILE_NAMES, PLANTS, SPECIALS, apply, build_template

_JSON_VALUES = (None, True, False, 0, 1, -1, 2**31, 2**40 + 1, 2**70, -(2**63), 1.5, float("inf"), "", "x",
                "float64", "int8", "zstd", "blosc", "../x", [], [0], [2**40], [1, 2, 3], {}, {"name": "gzip"},
                {"a": [None]}, [[[]]])


def draw(rng: np.random.Generator) -> tuple:
    kind = str(rng.choice(["flip"] * 4 + ["truncate", "extend", "json", "json", "json", "deep-json", "special",
                                           "plant", "bomb", "name"]))
    target, pos = int(rng.integers(0, 10**6)), float(rng.random())
    value = {
        "flip": lambda: int(rng.integers(1, 256)),
        "truncate": lambda: None,
        "extend": lambda: rng.bytes(int(rng.integers(1, 64))),
        "json": lambda: _JSON_VALUES[int(rng.integers(len(_JSON_VALUES)))],
        "deep-json": lambda: int(rng.choice([50, 100_000])),
        "special": lambda: str(rng.choice(SPECIALS)),
        "plant": lambda: str(rng.choice(PLANTS)),
        "bomb": lambda: int(rng.choice([1, 16, 64])),
        "name": lambda: HOSTILE_NAMES[int(rng.integers(len(HOSTILE_NAMES)))],
    }[kind]()
    return kind, target, pos, value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--show", type=int, default=5, help="print this many unacceptable cases in full")
    ap.add_argument("--progress", type=int, default=0, help="print a line every this many cases (0: never)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="fuzz_store-"))
    counts: Counter[str] = Counter()
    bad: list[str] = []
    start = time.perf_counter()
    try:
        template = build_template(work / "template")
        for case in range(args.cases):
            sandbox = work / f"case{case}"
            sandbox.mkdir()
            target = sandbox / "store"
            shutil.copytree(template, target, symlinks=True)
            outside = make_outside(sandbox)
            muts = [draw(rng) for _ in range(int(rng.integers(1, 4)))]
            done = [apply(target, outside, m) for m in muts]
            before = snapshot(sandbox)
            outcome = run_limited(exercise, str(target), timeout=args.timeout)
            counts[outcome.kind] += 1
            if snapshot(sandbox) != before:
                counts["escape"] += 1
                bad.append(f"case {case} {done}: escape")
            if not outcome.acceptable:
                bad.append(f"case {case} {done}: {outcome.kind}: {outcome.detail}")
            shutil.rmtree(sandbox, ignore_errors=True)
            if args.progress and (case + 1) % args.progress == 0:
                print(f"{case + 1} cases, {len(bad)} unacceptable, {time.perf_counter() - start:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - start
    rows = [("cases run", args.cases), ("read fine", counts["ok"]), ("refused (StoreError)", counts["refused"]),
            ("crashes (other exception)", counts["crash"]), ("signals", counts["signal"]), ("hangs", counts["hang"]),
            ("out of memory", counts["oom"]), ("escapes", counts["escape"]), ("wall time (s)", f"{wall:.1f}")]
    for name, value in rows:
        print(f"{name:<28}{value:>10}")
    for line in bad[: args.show]:
        print("\n" + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
