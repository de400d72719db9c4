"""Did the code get slower, or the machine? An older commit's search against today's, alternately, in one run.

    python -m tools.bench_versions STORE QUERIES.npy [--rev df239b2] [--queries 200] [--rounds 2] [--store2 STORE]

The older commit is checked out into a worktree (/tmp/lodestore-REV, made once) and its C kernels built
there in place; each (code, store, round) is one child process that opens a Searcher with its defaults,
warms up on 20 queries, and times `--queries` one at a time. Rounds alternate the codes, so both see the
same machine. Prints p50 and CPU ms a query per cell. The older commit must predate the package's move
under `lodestore.` (issue 16): its `engine` is imported from the worktree's top level (a later commit's
`lodestore.engine` would resolve to the installed, current code, so the tool refuses one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
import numpy as np
path, queries, n, tree = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if tree:
    sys.path.insert(0, tree)
    import engine
    from engine import Searcher
    assert engine.__file__.startswith(tree), engine.__file__  # the older commit's code, not the installed one
else:
    from lodestore.engine import Searcher
q = np.load(queries)[:n]
with Searcher(path) as s:
    for x in q[:20]:
        s.search([x], k=10)
    ts, c0 = [], time.process_time()
    for x in q:
        t = time.perf_counter()
        s.search([x], k=10)
        ts.append(time.perf_counter() - t)
    print(json.dumps({"p50_ms": float(np.median(ts)) * 1e3, "cpu_ms": (time.process_time() - c0) / len(q) * 1e3}))
"""


def worktree(rev: str) -> Path:
    """A worktree of `rev` with its C kernels built in place (made once, reused)."""
    tree = Path(f"/tmp/lodestore-{rev}")
    layout = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:setup.py"], capture_output=True, text=True)
    if layout.returncode or "lodestore.engine" in layout.stdout:
        raise SystemExit(f"{rev}: not a commit from before the package moved under lodestore. (see --help)")
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                       capture_output=True)
        subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=tree, check=True,
                       capture_output=True)
    return tree


def measure(store: str, queries: str, n: int, tree: Path | None) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, store, queries, str(n), str(tree or "")],
                         cwd="/tmp" if tree else ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("queries")
    p.add_argument("--rev", default="df239b2", help="the older commit (default: session 6's last)")
    p.add_argument("--store2", default=None, help="a second store (e.g. one the older commit built)")
    p.add_argument("--queries", dest="n", type=int, default=200)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    tree = worktree(args.rev)
    stores = [args.store] + ([args.store2] if args.store2 else [])
    cells = [(code, store) for store in stores for code in (args.rev, "current")]
    print("| round | " + " | ".join(f"{code} code, {Path(store).name} ({Path(store).parent.name})"
                                   for code, store in cells) + " |")
    print("|---|" + "---|" * len(cells))
    for r in range(1, args.rounds + 1):
        got = [measure(store, args.queries, args.n, tree if code == args.rev else None) for code, store in cells]
        print(f"| {r} | " + " | ".join(f"{g['p50_ms']:.1f} ms ({g['cpu_ms']:.1f} CPU)" for g in got) + " |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
