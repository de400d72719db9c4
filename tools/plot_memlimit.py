"""Search latency with the store cached against the page cache held below the store, by store size: one PNG.

    .venv-peers/bin/python -m tools.plot_memlimit --run 1e8=ROWS.json [--run ...] \\
        [--point 1.2e6:CACHED_P50:LIMITED_P50:LABEL ...] --out docs/scale_memlimit.png

--run: a tools/bench_search.py --out file of one store: its first row held with the whole store cached
(memory limit cache=F, F >= 1) gives the cached point, every other row with a memory limit a point of
the limited curve (the best such row: hints on or off, whichever the Searcher's default would be is
in the table beside the plot). --point: figures from an earlier run's table (docs/BENCHMARKS.md C18),
for sizes whose rows were not kept. matplotlib is imported here only (it lives in .venv-peers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def points_from_run(tokens: float, rows: list[dict]) -> tuple[float, float, float]:
    """(tokens, cached p50, limited p50) of one bench_search run."""
    def limit(r: dict) -> str:
        return str(r.get("memory_limit") or "")

    cached = [r for r in rows if limit(r).startswith("cache=") and float(limit(r)[6:]) >= 1]
    limited = [r for r in rows if limit(r) and r not in cached and r.get("placement") != "index-paged"]
    if not cached or not limited:
        raise SystemExit(f"a run at {tokens:g} tokens needs a cached row (cache=F, F >= 1) and a limited one")
    return tokens, cached[0]["p50_ms"], min(r["p50_ms"] for r in limited)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.plot_memlimit", description=__doc__.split("\n")[0])
    p.add_argument("--run", action="append", default=[], help="TOKENS=ROWS.json (bench_search --out)")
    p.add_argument("--point", action="append", default=[], help="TOKENS:CACHED_P50:LIMITED_P50")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    pts = []
    for spec in args.run:
        tokens, _, path = spec.partition("=")
        pts.append(points_from_run(float(tokens), json.loads(Path(path).read_text())))
    for spec in args.point:
        tokens, cached, limited = spec.split(":")[:3]
        pts.append((float(tokens), float(cached), float(limited)))
    if not pts:
        p.error("give at least one --run or --point")
    pts.sort()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [t for t, _, _ in pts]
    ax.plot(xs, [c for _, c, _ in pts], marker="o", label="whole store in the page cache")
    ax.plot(xs, [m for _, _, m in pts], marker="s", label="page cache held below the store (memory cgroup)")
    for t, c, m in pts:
        ax.annotate(f"x{m / c:.2f}", (t, m), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens in the store")
    ax.set_ylabel("p50 latency (ms), one query at a time")
    ax.set_title("Larger than RAM: p50, cached vs memory-limited (same run per size)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")
    for t, c, m in pts:
        print(f"{t:,.0f} tokens: cached {c:.1f} ms, limited {m:.1f} ms (x{m / c:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
