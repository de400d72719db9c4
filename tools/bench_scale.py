"""lodestore from 1e5 to 1e7+ tokens (and the peers where they fit), with the curves drawn.

    .venv-peers/bin/python -m tools.bench_scale --work DIR \\
        --point 1e5=BUNDLE --point 1e6=BUNDLE:STORE ... [--peers brute,plaid_k10 --peers-max 1.5e6]
        [--rows lodestore] [--cache warm|cold|both] [--queries 100] [--out rows.json] [--plots docs]
    .venv-peers/bin/python -m tools.bench_scale --plot-only rows.json [more.json ...] --plots docs

Each point is a bundle and optionally an existing lodestore store built from
it (reused as is: its build figures then come from the run that built it, and
the table says "reused"); without one, the store is built in this run. Every
row is measured by tools/bench_peers.py's children (build: wall s, peak RSS
via wait4, bytes on disk; search: fresh process, 5 warm-ups, every query
once: p50/p95, RSS, recall@10 against the bundle's truth_k100.npy where
tools/ground_truth.py made one, and against exhaustive search over the store).
Peers (--peers) run only at points of at most --peers-max tokens.

Plots (matplotlib, in .venv-peers only, imported by the plotting function):
scale_rss.png (search RSS vs tokens), scale_p50.png (p50 vs tokens),
scale_recall_p50.png (recall@10 vs p50, one marker per engine and size).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from tools import bench_peers


def _tokens(text: str) -> float:
    return float(text)


def prepare_reused_store(work: Path, bundle: Path, store: Path) -> None:
    """work/lodestore laid out as bench_peers expects, pointing at an existing store (never modified)."""
    index = work / "lodestore"
    index.mkdir(parents=True, exist_ok=True)
    link = index / "store"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(store.resolve())
    if (bundle / "ids.txt").exists():
        shutil.copyfile(bundle / "ids.txt", index / "ids.txt")
    # exhaustive-search truth computed earlier beside the store (keyed by manifest checksum and queries)
    cached = store.with_name(store.name + ".truth.json")
    if cached.exists():
        shutil.copyfile(cached, index / "store.truth.json")
    record = work / "lodestore.build.json"
    if not record.exists():
        from tools import peer_engines

        record.write_text(json.dumps({"build_s": None, "peak_rss_mb": None, "reused": True,
                                      "disk_bytes": peer_engines.dir_bytes(link), "store": str(store)}))


def measure(args) -> list[dict]:
    rows = []
    for spec in args.point:
        label, _, rest = spec.partition("=")
        bundle_s, _, store_s = rest.partition(":")
        bundle = Path(bundle_s)
        work = args.work / label
        names = list(args.rows.split(","))
        n_tokens = int(__import__("numpy").load(bundle / "doclens.npy").sum())
        if args.peers and n_tokens <= args.peers_max:
            names += args.peers.split(",")
        reuse = args.reuse
        if store_s:
            prepare_reused_store(work, bundle, Path(store_s))
            reuse = True
        ns = argparse.Namespace(bundle=bundle, work=work, rows=",".join(names), queries=args.queries, batch=args.batch,
                                cache=args.cache, reuse=reuse, build_timeout=args.build_timeout,
                                search_timeout=args.search_timeout)
        print(f"== point {label}: {bundle} ({n_tokens:,} tokens) rows {names}", file=sys.stderr, flush=True)
        for r in bench_peers.run(ns):
            r["point"] = label
            rows.append(r)
    return rows


def table(rows: list[dict]) -> str:
    head = ("tokens", "engine", "cache", "build s", "build peak MB", "B/token", "search RSS MB", "p50 ms", "p95 ms",
            "hit rate", "R@10 raw", "R@10 store", "load")
    f = bench_peers._f
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        b = r["build"]
        cache = "cold" if r["cold"] else "warm"
        if "p50_ms" not in r:
            lines.append("| " + " | ".join([f"{r['tokens']:,}", r["label"], cache, r.get("error", "-")] +
                                           ["-"] * (len(head) - 4)) + " |")
            continue
        build_s = "reused" if b.get("reused") and b.get("build_s") is None else f(b.get("build_s"), ".1f")
        cells = [f"{r['tokens']:,}", r["label"], cache, build_s, f(b.get("peak_rss_mb"), ".0f"),
                 f(b["disk_bytes"] / r["tokens"], ".2f"), f(r["rss_mb"], ".0f"), f(r["p50_ms"], ".1f"),
                 f(r["p95_ms"], ".1f"), f(r.get("hit_rate"), ".2f"), f(r["recall_raw"], ".3f"),
                 f(r["recall_store"], ".3f"), f(r["loadavg"], ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    """Three PNGs under out_dir; matplotlib is imported here only (it lives in .venv-peers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    ok = [r for r in rows if "p50_ms" in r and not r["cold"]]
    series: dict[str, list[dict]] = {}
    for r in ok:
        series.setdefault(r["label"], []).append(r)
    paths = []
    for key, ylabel, fname, title in (("rss_mb", "search process RSS (MB)", "scale_rss.png", "Search RSS vs corpus size"),
                                      ("p50_ms", "p50 latency (ms, warm)", "scale_p50.png", "Query latency vs corpus size")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, pts in sorted(series.items()):
            pts = sorted(pts, key=lambda r: r["tokens"])
            ax.plot([p["tokens"] for p in pts], [p[key] for p in pts], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens in the corpus")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        paths.append(out_dir / fname)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in sorted(series.items()):
        pts = [p for p in pts if p.get("recall_raw") is not None or p.get("recall_store") is not None]
        if not pts:
            continue
        xs = [p["p50_ms"] for p in pts]
        ys = [p["recall_raw"] if p.get("recall_raw") is not None else p["recall_store"] for p in pts]
        ax.scatter(xs, ys, label=label)
        for p, x, y in zip(pts, xs, ys):
            ax.annotate(f"{p['tokens']:.2g}" + ("" if p.get("recall_raw") is not None else " (vs store)"), (x, y),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency (ms, warm)")
    ax.set_ylabel("recall@10 vs exact MaxSim (uncompressed;\n\"vs store\": vs exhaustive over the store)")
    ax.set_title("Recall vs latency operating points")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "scale_recall_p50.png", dpi=110)
    plt.close(fig)
    paths.append(out_dir / "scale_recall_p50.png")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_scale", description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path)
    p.add_argument("--point", action="append", default=[], help="LABEL=BUNDLE[:STORE] (repeat)")
    p.add_argument("--rows", default="lodestore", help="lodestore rows at every point (bench_peers row names)")
    p.add_argument("--peers", default="", help="peer rows (bench_peers names) at points of at most --peers-max tokens")
    p.add_argument("--peers-max", type=_tokens, default=1.5e6)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--cache", choices=("warm", "cold", "both"), default="warm")
    p.add_argument("--reuse", action="store_true", help="reuse indexes built by an earlier run of this tool")
    p.add_argument("--build-timeout", type=float, default=None)
    p.add_argument("--search-timeout", type=float, default=None)
    p.add_argument("--out", type=Path)
    p.add_argument("--plots", type=Path, help="draw the PNGs into this folder")
    p.add_argument("--plot-only", type=Path, nargs="*", help="draw from rows JSON files of earlier runs")
    args = p.parse_args(argv)
    if args.plot_only:
        rows = [r for f in args.plot_only for r in json.loads(f.read_text())]
    else:
        if not args.work or not args.point:
            p.error("--work and at least one --point are required")
        rows = measure(args)
        print(f"\nqueries: {args.queries}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(table(rows))
        if args.out:
            args.out.write_text(json.dumps(rows, indent=2))
    if args.plots:
        for path in plot(rows, args.plots):
            print(f"wrote {path}")
    elif args.plot_only:
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
