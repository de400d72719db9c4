"""Crash soak: SIGKILL a writer at every durability step of add, delete, compact and upsert.

Operations: the first add of an empty store (codec training), add, delete, compact and
add with upsert; all but the first start from a store of two segments with deletions.

For each operation the writer runs once to completion (the state *after*) and counts its
durability steps (failpoints and fsyncs, store/_fs.py). Then, from the same starting
store each time, a writer subprocess is killed at step n (LODESTORE_KILL_AT_STEP=n) for
every n (or --points of them, evenly spread), and optionally at random moments. After
each kill the store must open, `verify` must pass, and its content must equal, document
by document (ids, order and decoded token matrices), exactly the state before or after
the operation, at the matching generation; a writable open then recovers (collects the
leftovers) without changing the content, and leaves no unnamed file in segments/.

    python -m tools.soak_crash --workdir /tmp/soak            # every step of every operation
    python -m tools.soak_crash --points 3 --random 0          # a quick run (the test suite's)

Prints a table per operation and exits 1 if any kill point failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPS = ("first-add", "add", "delete", "compact", "upsert")

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from lodestore import store
    from lodestore.store import _compact, _fs, _ingest
    _ingest.BATCH_TOKENS = 64   # several encode batches per add: kill points between them
    _compact.COPY_TOKENS = 64   # several copy steps per compaction
    path, op, dim = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(7)
    with store.Store.open(path, writable=True) as s:
        if op == "first-add":  # trains and writes the codec too
            s.add([f"first{i}" for i in range(8)], [rng.standard_normal((int(n), dim)) for n in rng.integers(8, 40, 8)])
        elif op == "add":
            s.add([f"new{i}" for i in range(6)], [rng.standard_normal((int(n), dim)) for n in rng.integers(8, 40, 6)])
        elif op == "delete":
            ids = s.ids()
            s.delete([ids[1], ids[len(ids) // 2], ids[-1]])
        elif op == "compact":
            s.compact()
        elif op == "upsert":
            ids = s.ids()
            s.add([ids[2], ids[-3], "fresh"], [rng.standard_normal((12, dim)) for _ in range(3)], upsert=True)
    print(f"steps={_fs.steps}", flush=True)
""")


def build_base(path: Path, dim: int, n_docs: int, seed: int) -> None:
    """Two segments and a deletion in each: every operation has real work to do."""
    from lodestore import store
    from lodestore.store.testing.synthetic import make_corpus

    tokens, lens = make_corpus(n_docs, dim, seed=seed, mean_len=20, min_len=4, max_len=48)
    bounds = np.concatenate([[0], np.cumsum(lens)])
    docs = [tokens[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    ids = [f"d{i}" for i in range(n_docs)]
    half = n_docs // 2
    with store.Store.create(path, dim=dim, nbits=2, num_centroids=32, seed=seed) as s:
        s.add(ids[:half], docs[:half])
        s.add(ids[half:], docs[half:])
        s.delete([ids[0], ids[-2]])


def snapshot(path: Path) -> tuple[int, dict[str, np.ndarray]]:
    """(generation, id -> decoded tokens in store order) of a store that must verify."""
    from lodestore import store

    with store.Store.open(path) as s:
        report = s.verify()
        if not report.ok:
            raise AssertionError(f"verify failed: {report}")
        return s.generation, {i: s.get(i) for i in s.ids()}


def same(a: tuple, b: tuple) -> bool:
    return (a[0] == b[0] and list(a[1]) == list(b[1])
            and all(np.array_equal(a[1][k], b[1][k]) for k in a[1]))


def run_writer(path: Path, op: str, dim: int, kill_at: int | None, *, kill_after_s: float | None = None):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LODESTORE_FAILPOINT_KILL", None)
    env["LODESTORE_KILL_AT_STEP"] = str(kill_at if kill_at else 10**9)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), op, str(dim)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after_s is not None:
        try:
            proc.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def check_point(work: Path, base: Path, op: str, dim: int, before, after, *, kill_at=None, kill_after_s=None) -> str:
    """One kill: 'before', 'after', 'finished' (the writer completed first), or 'FAIL: ...'."""
    from lodestore import store
    from lodestore.store._commit import SEGMENTS_DIR, manifest_files

    path = work / "s"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(base, path)
    rc, out, err = run_writer(path, op, dim, kill_at, kill_after_s=kill_after_s)
    if rc == 0:
        outcome = "finished"
    elif rc != -signal.SIGKILL:
        return f"FAIL: writer exited {rc}: {err.strip()[-300:]}"
    try:
        got = snapshot(path)
        if rc != 0:
            outcome = "before" if same(got, before) else "after" if same(got, after) else None
            if outcome is None:
                return f"FAIL: generation {got[0]}: content is neither the state before nor after"
        elif not same(got, after):
            return "FAIL: a finished writer left the wrong content"
        with store.Store.open(path, writable=True) as w:  # recovery
            named = manifest_files(w.manifest)
        if not same(snapshot(path), got):
            return "FAIL: recovery changed the content"
        left = sorted(p.name for p in (path / SEGMENTS_DIR).iterdir() if p.name not in named)
        if left:
            return f"FAIL: leftovers after recovery: {left}"
    except Exception as e:  # noqa: BLE001 - every failure is reported in the table
        return f"FAIL: {type(e).__name__}: {e}"
    return outcome


def soak(workdir: Path, ops: list[str], dim: int, n_docs: int, points: int | None, n_random: int, seed: int,
         log=print) -> list[dict]:
    from lodestore import store

    bases = {"base": workdir / "base", "empty": workdir / "empty"}
    for b in bases.values():
        shutil.rmtree(b, ignore_errors=True)
    build_base(bases["base"], dim, n_docs, seed)
    store.Store.create(bases["empty"], dim=dim, nbits=2, num_centroids=32, seed=seed).close()
    rng = np.random.default_rng(seed)
    rows = []
    for op in ops:
        base = bases["empty" if op == "first-add" else "base"]
        before = snapshot(base)
        path = workdir / "s"
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(base, path)
        t0 = time.perf_counter()
        rc, out, err = run_writer(path, op, dim, None)
        duration = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"{op}: the writer failed without a kill: {err}")
        total = int(out.strip().rsplit("steps=", 1)[1])
        after = snapshot(path)
        chosen = list(range(1, total + 1))
        if points is not None and points < total:
            chosen = sorted({int(round(x)) for x in np.linspace(1, total, points)})
        counts = {"before": 0, "after": 0, "finished": 0}
        failures = []
        t1 = time.perf_counter()
        plan = [("step", n) for n in chosen] + [("random", float(rng.uniform(0.0, duration))) for _ in range(n_random)]
        for kind, arg in plan:
            if kind == "step":
                outcome = check_point(workdir, base, op, dim, before, after, kill_at=arg)
            else:
                outcome = check_point(workdir, base, op, dim, before, after, kill_after_s=arg)
            if outcome.startswith("FAIL"):
                failures.append(f"{op} {kind} {arg}: {outcome}")
                log(failures[-1])
            else:
                counts[outcome] += 1
        rows.append({"op": op, "steps": total, "kill_points": len(chosen), "random_kills": n_random,
                     "killed": len(plan) - counts["finished"] - len(failures), **counts,
                     "failures": failures, "seconds": time.perf_counter() - t1})
    return rows


def table(rows: list[dict]) -> str:
    head = ("| operation | durability steps | step kills | random kills | ended before | ended after "
            "| writer finished first | failures | seconds |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['op']} | {r['steps']} | {r['kill_points']} | {r['random_kills']} | {r['before']} "
                     f"| {r['after']} | {r['finished']} | {len(r['failures'])} | {r['seconds']:.0f} |")
    t = {k: sum(r[k] for r in rows) for k in ("kill_points", "random_kills", "before", "after", "finished")}
    fails = sum(len(r["failures"]) for r in rows)
    lines.append(f"| **all** | | {t['kill_points']} | {t['random_kills']} | {t['before']} | {t['after']} "
                 f"| {t['finished']} | {fails} | {sum(r['seconds'] for r in rows):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--docs", type=int, default=40)
    p.add_argument("--points", type=int, default=None, help="step kills per operation, evenly spread (default: all)")
    p.add_argument("--random", type=int, default=10, help="extra kills at random moments per operation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    if not set(ops) <= set(OPS):
        p.error(f"--ops: choose from {OPS}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = soak(workdir, ops, args.dim, args.docs, args.points, args.random, args.seed)
    print(table(rows))
    return 1 if any(r["failures"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
