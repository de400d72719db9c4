"""lodestore side by side with the peers: one table, same bundle, same run, same method.

    .venv-peers/bin/python -m tools.bench_peers BUNDLE --work DIR [--rows lodestore,plaid_k10,...]
        [--queries 200] [--cache warm|cold|both] [--reuse] [--out rows.json]

Every engine is an adapter in tools/peer_engines.py (build, open, search), fed
the bundle's own vectors. Method, the same for every row:
- build in a child process: wall s of the build call (reading the bundle
  included), peak RSS of the child from wait4 (ru_maxrss), bytes of the index
  on disk, bytes per token;
- search in a fresh child: load s (opening the index), 5 warm-up queries,
  then every query once, one at a time: p50/p95 ms, QPS, CPU ms/query (all
  threads), steady RSS (VmRSS after the loop), VmHWM, bytes the process read
  from the device per query (/proc/self/io read_bytes), then batch mode
  (--batch queries per call) as ms/query where the engine has one;
- warm page cache (the parent reads the index files once before the child
  starts), and with --cache cold/both rows whose index files
  are evicted (posix_fadvise DONTNEED) before every query;
- recall@10 against exact MaxSim over the uncompressed bundle
  (BUNDLE/truth_k100.npy, python -m tools.ground_truth BUNDLE) and, for
  lodestore rows, against exhaustive MaxSim over its own compressed store;
- the 1-minute load average at the end of every child (the machine is shared).
Peers missing from the running interpreter give rows that say so (run it with
.venv-peers/bin/python after `make peers`); a failing build or search gives a
row with its error, and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# row name -> (engine key, search options)
ROWS: dict[str, tuple[str, dict]] = {
    "lodestore": ("lodestore", {"budget": "auto"}),
    "lodestore_ram": ("lodestore", {"budget": "all"}),
    "lodestore_prefetch": ("lodestore", {"budget": "auto", "prefetch": True}),
    "lodestore_n768": ("lodestore", {"budget": "auto", "ndocs": 768}),
    "lodestore_n1024": ("lodestore", {"budget": "auto", "ndocs": 1024}),
    "plaid_k10": ("plaid", {"ncells": 1, "centroid_score_threshold": 0.5, "ndocs": 256}),
    "plaid_default": ("plaid", {}),
    "voyager": ("voyager", {}),
    "lance_flat": ("lance_flat", {}),
    "lance_ivfpq": ("lance_ivfpq", {}),
    "brute": ("brute", {}),
    "fast_plaid": ("fast_plaid", {}),
}
LABELS = {
    "lodestore": "lodestore (budget auto)", "lodestore_ram": "lodestore (all-in-RAM)",
    "lodestore_prefetch": "lodestore (budget auto, prefetch on)",
    "lodestore_n768": "lodestore (budget auto, ndocs 768)",
    "lodestore_n1024": "lodestore (budget auto, ndocs 1024)",
    "plaid_k10": "Stanford PLAID k10 (ncells 1, thr 0.5, ndocs 256)",
    "plaid_default": "Stanford PLAID pylate defaults (ncells 8, thr 0.35, ndocs 8192)",
    "voyager": "pylate Voyager HNSW (M 64, ef 200, k_token 100)", "lance_flat": "LanceDB multivector flat",
    "lance_ivfpq": "LanceDB multivector IVF_PQ", "brute": "brute-force MaxSim (float32 in RAM)",
    "fast_plaid": "fast-plaid",
}
DEFAULT_ROWS = ",".join(r for r in ROWS if r not in ("lodestore_prefetch", "lodestore_n768", "lodestore_n1024"))
WARMUP = 5


def _label(name: str, index: Path) -> str:
    """The row's label; lodestore rows name the codec their store was built with."""
    label = LABELS[name]
    manifest = index / "store" / "manifest.json"
    if name.startswith("lodestore") and manifest.exists():
        codec = json.loads(manifest.read_text())["codec"] or {}
        kind = "pq %s" % codec.get("pq_subspaces") if codec.get("kind") == "pq" else "scalar %s-bit" % codec.get("nbits")
        label = label[:-1] + f", {kind})"
    return label


# ---------------------------------------------------------------------- children
def child_build(cfg: dict) -> dict:
    from tools import peer_engines

    engine = peer_engines.make(cfg["engine"])
    index = Path(cfg["index"])
    peer_engines.clear(index)
    t = time.perf_counter()
    engine.build(Path(cfg["bundle"]), index)
    return {"build_s": time.perf_counter() - t, "loadavg": os.getloadavg()[0]}


def child_search(cfg: dict) -> dict:
    from tools import memstat, peer_engines

    engine = peer_engines.make(cfg["engine"])
    index = Path(cfg["index"])
    queries = np.load(Path(cfg["bundle"]) / "queries.npy")[: cfg["queries"]].astype(np.float32)
    t = time.perf_counter()
    engine.open(index, cfg["options"])
    load_s = time.perf_counter() - t
    for q in queries[:WARMUP]:
        engine.search(q, 10)
    engine.reset_stats()
    evict = [engine.data_path(index)]
    times, results = [], []
    io0, cpu0 = memstat.io_read_bytes(), time.process_time()
    for q in queries:
        if cfg["cold"]:
            memstat.evict(evict)
        t = time.perf_counter()
        results.append([int(i) for i in engine.search(q, 10)])
        times.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu0
    disk = memstat.io_read_bytes() - io0
    after = memstat.status_mb()
    stats = engine.stats()
    batch_times, b = [], cfg["batch"]
    if b > 1:
        for s in range(0, len(queries), b):
            if cfg["cold"]:
                memstat.evict(evict)
            t = time.perf_counter()
            out = engine.search_batch(queries[s : s + b], 10)
            if out is None:
                break
            batch_times.append((time.perf_counter() - t) / len(queries[s : s + b]))
    n = len(queries)
    return {
        "load_s": load_s, "p50_ms": float(np.percentile(times, 50) * 1e3), "p95_ms": float(np.percentile(times, 95) * 1e3),
        "qps": n / sum(times), "cpu_ms": cpu / n * 1e3,
        "batch_ms": float(np.mean(batch_times) * 1e3) if batch_times else None,
        "rss_mb": after["VmRSS"], "hwm_mb": after["VmHWM"], "disk_kb_per_q": disk / n / 1e3,
        "results": results, "loadavg": os.getloadavg()[0], **stats,
    }


def _run_child(kind: str, cfg: dict, timeout: float | None, log: Path) -> dict:
    """Run a child of this tool; returns its JSON result plus wall s and peak RSS (wait4)."""
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    env = dict(os.environ, TQDM_DISABLE="1")
    t = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tools.bench_peers", "-", f"--{kind}", json.dumps(cfg),
                                 "--result", str(result)], stdout=out, stderr=subprocess.STDOUT, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if timeout and time.perf_counter() - t > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                return {"error": f"timed out after {timeout:.0f} s (log: {log})"}
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode < 0:
        return {"error": f"killed by signal {-proc.returncode} after {wall:.0f} s (log: {log})"}
    if proc.returncode != 0 or not result.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' / '.join(tail)[-300:]} (log: {log})"}
    r = json.loads(result.read_text())
    r["child_wall_s"] = wall
    r["peak_rss_mb"] = usage.ru_maxrss / 1024  # KB on Linux
    return r


# ---------------------------------------------------------------------- parent
def raw_truth(bundle: Path, n: int) -> np.ndarray | None:
    path = bundle / "truth_k100.npy"
    if not path.exists():
        print(f"(no {path}: run python -m tools.ground_truth {bundle} for end-to-end recall)", file=sys.stderr)
        return None
    return np.load(path)[:n, :10]


def judged_ndcg(bundle: Path, results: list[list[int]]) -> float | None:
    """nDCG@10 of the result lists (bundle document positions, query i = the bundle's query i) against
    the bundle's judgements (qrels.tsv, query_ids.txt and ids.txt, as tools.encode_collection writes
    them; ir-measures via lodestore.evaluate); None for a bundle without them (synthetic ones)."""
    files = [bundle / n for n in ("qrels.tsv", "query_ids.txt", "ids.txt")]
    if not all(f.exists() for f in files):
        return None
    from lodestore.evaluate import measure

    lines = files[0].read_text().splitlines()
    rows = [ln.split("\t") for ln in lines if ln.strip()]
    if rows and not rows[0][-1].strip().lstrip("-").isdigit():
        rows = rows[1:]  # the header
    qrels = [(q, d, int(g)) for q, d, g in (r[:1] + r[-2:] for r in rows)]
    qids = files[1].read_text().splitlines()[: len(results)]
    ids = files[2].read_text().splitlines()
    judged = {q for q, _, _ in qrels}
    keep = [i for i, q in enumerate(qids) if q in judged]
    if not keep:
        return None
    ranked = [[(ids[d], float(-r)) for r, d in enumerate(results[i][:10])] for i in keep]
    return measure([qids[i] for i in keep], ranked, qrels, ("nDCG@10",))["nDCG@10"]


def recall(results: list[list[int]], truth, k: int = 10) -> float:
    return float(np.mean([len(set(r[:k]) & set(list(t)[:k])) / k for r, t in zip(results, truth)]))


def store_truth(store: Path, bundle: Path, queries: np.ndarray) -> list[list[int]]:
    """Exhaustive MaxSim over a lodestore store (cached beside it), as bundle indices."""
    from tools import bench_search

    ids = bench_search.truth(store, queries)
    ids_file = bundle / "ids.txt"
    pos = {s: i for i, s in enumerate(ids_file.read_text().splitlines())} if ids_file.exists() else None
    return [[pos[s] if pos else int(s) for s in row] for row in ids]


def build_once(engine_key: str, args, builds: dict) -> dict:
    """Build (or reuse with --reuse) the index of one engine; cached in builds."""
    if engine_key in builds:
        return builds[engine_key]
    from tools import peer_engines

    engine = peer_engines.make(engine_key)
    index = args.work / engine_key
    record = args.work / f"{engine_key}.build.json"
    missing = engine.missing()
    if missing:
        b = {"error": missing}
    elif args.reuse and record.exists():
        b = json.loads(record.read_text())
        b["reused"] = True
    else:
        print(f"building {engine_key} ...", file=sys.stderr, flush=True)
        b = _run_child("child-build", {"engine": engine_key, "bundle": str(args.bundle), "index": str(index)},
                       args.build_timeout, args.work / f"{engine_key}.build.log")
        if "error" not in b:
            b["disk_bytes"] = peer_engines.dir_bytes(engine.data_path(index))
            record.write_text(json.dumps(b))
        print(f"  {engine_key}: {b}", file=sys.stderr, flush=True)
    builds[engine_key] = b
    return b


def run(args) -> list[dict]:
    from tools import peer_engines

    args.work.mkdir(parents=True, exist_ok=True)
    queries = np.load(args.bundle / "queries.npy")[: args.queries]
    n_tokens = int(np.load(args.bundle / "doclens.npy").sum())
    truth = raw_truth(args.bundle, len(queries))
    builds: dict = {}
    rows = []
    for name in args.rows.split(","):
        engine_key, options = ROWS[name]
        b = build_once(engine_key, args, builds)
        for cold in {"warm": [False], "cold": [True], "both": [False, True]}[args.cache]:
            row = {"row": name, "label": _label(name, args.work / engine_key), "engine": engine_key, "options": options, "cold": cold,
                   "tokens": n_tokens, "build": b}
            rows.append(row)
            if "error" in b:
                row["error"] = b["error"]
                continue
            print(f"searching {name}{' (cold)' if cold else ''} ...", file=sys.stderr, flush=True)
            if not cold:  # warm rows start with the index files in the page cache, for every engine
                from tools import memstat

                memstat.warm([args.work / engine_key])
            cfg = {"engine": engine_key, "bundle": str(args.bundle), "index": str(args.work / engine_key),
                   "options": options, "queries": len(queries), "cold": cold, "batch": args.batch}
            r = _run_child("child-search", cfg, args.search_timeout,
                           args.work / f"{name}{'.cold' if cold else ''}.search.log")
            if "error" in r:
                row["error"] = r["error"]
                continue
            results = r.pop("results")
            row.update(r)
            row["recall_raw"] = recall(results, truth) if truth is not None else None
            row["ndcg10"] = judged_ndcg(args.bundle, results)
            store = peer_engines.make(engine_key).store_path(args.work / engine_key)
            row["recall_store"] = recall(results, store_truth(store, args.bundle, queries)) if store else None
            print(f"  {name}: p50 {row['p50_ms']:.1f} ms, R@10 raw {row['recall_raw']}", file=sys.stderr, flush=True)
        if getattr(args, "out", None):  # rows so far, so a long run that is stopped keeps what it measured
            args.out.write_text(json.dumps(rows, indent=2))
    return rows


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(rows: list[dict]) -> str:
    head = ("engine", "cache", "build s", "build peak MB", "disk MB", "B/token", "load s", "p50 ms", "p95 ms", "QPS",
            "CPU ms/q", "batch ms/q", "RSS MB", "HWM MB", "disk KB/q", "hit rate", "R@10 raw", "R@10 store", "nDCG@10", "load")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        b = r["build"]
        cache = "cold" if r["cold"] else "warm"
        if "error" in r and "p50_ms" not in r:
            built = "error" not in b
            cells = [r["label"], cache] + ([_f(b.get("build_s"), ".1f"), _f(b.get("peak_rss_mb"), ".0f"),
                                            _f(b.get("disk_bytes", 0) / 1e6, ".1f"),
                                            _f(b.get("disk_bytes", 0) / r["tokens"], ".1f")] if built else ["-"] * 4)
            cells += [r["error"]] + ["-"] * (len(head) - len(cells) - 1)
        else:
            cells = [r["label"], cache, _f(b["build_s"], ".1f") + (" (reused)" if b.get("reused") else ""),
                     _f(b["peak_rss_mb"], ".0f"), _f(b["disk_bytes"] / 1e6, ".1f"), _f(b["disk_bytes"] / r["tokens"], ".1f"),
                     _f(r["load_s"], ".2f"), _f(r["p50_ms"], ".1f"), _f(r["p95_ms"], ".1f"), _f(r["qps"], ".0f"),
                     _f(r["cpu_ms"], ".1f"), _f(r["batch_ms"], ".1f"), _f(r["rss_mb"], ".0f"), _f(r["hwm_mb"], ".0f"),
                     _f(r["disk_kb_per_q"], ".0f"), _f(r.get("hit_rate"), ".2f"), _f(r["recall_raw"], ".3f"), _f(r["recall_store"], ".3f"),
                     _f(r.get("ndcg10"), ".4f"), _f(r["loadavg"], ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> str:
    """lodestore rows against the Stanford PLAID k10 row of the same cache state (the issue's targets)."""
    out = []
    for cold in (False, True):
        ref = next((r for r in rows if r["row"] == "plaid_k10" and r["cold"] == cold and "p50_ms" in r), None)
        if ref is None:
            continue
        for r in rows:
            if r["engine"] == "lodestore" and r["cold"] == cold and "p50_ms" in r:
                b, rb = r["build"], ref["build"]
                raw = ("R@10 raw -" if r.get("recall_raw") is None or ref.get("recall_raw") is None
                       else f"R@10 raw {r['recall_raw'] - ref['recall_raw']:+.3f}")
                out.append(
                    f"  {r['label']} ({'cold' if cold else 'warm'}) vs PLAID k10: p50 x{r['p50_ms'] / ref['p50_ms']:.2f} "
                    f"(target <= 1), search RSS x{r['rss_mb'] / ref['rss_mb']:.3f} (<= 0.2), "
                    f"build s x{b['build_s'] / rb['build_s']:.3f} (<= 0.25), build peak RSS "
                    f"x{b['peak_rss_mb'] / rb['peak_rss_mb']:.3f} (<= 0.25), B/token x{b['disk_bytes'] / rb['disk_bytes']:.2f} "
                    f"(<= 1), {raw} (>= +0.03)")
    return "\n".join(out)


def header(args, rows: list[dict]) -> str:
    import importlib.metadata as md
    import platform

    versions = []
    for pkg in ("numpy", "torch", "pylate", "voyager", "lancedb", "fast-plaid"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            versions.append(f"{pkg} -")
    meta = json.loads((args.bundle / "bundle.json").read_text())
    return (f"bundle: {args.bundle} ({rows[0]['tokens']:,} tokens, {meta.get('n_docs', '?')} docs, d={meta.get('dim')}); "
            f"queries: {args.queries}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"{os.cpu_count()} CPUs; Python {platform.python_version()}; {', '.join(versions)}. "
            "Cold rows: index files evicted with posix_fadvise(DONTNEED) before every query.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_peers", description=__doc__.split("\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--work", type=Path, help="folder for the indexes and logs (one subfolder per engine)")
    p.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated rows, from: {DEFAULT_ROWS}")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--cache", choices=("warm", "cold", "both"), default="warm",
                   help="page cache state of the search rows (cold: index files evicted before every query)")
    p.add_argument("--reuse", action="store_true", help="reuse an index built by an earlier run (its build figures too)")
    p.add_argument("--build-timeout", type=float, default=None)
    p.add_argument("--search-timeout", type=float, default=None)
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--child-build", help=argparse.SUPPRESS)
    p.add_argument("--child-search", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_build or args.child_search:
        r = child_build(json.loads(args.child_build)) if args.child_build else child_search(json.loads(args.child_search))
        args.result.write_text(json.dumps(r))
        return 0
    if args.work is None:
        p.error("--work is required")
    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {DEFAULT_ROWS}")
    rows = run(args)
    print("\n" + header(args, rows))
    print(table(rows))
    text = ratios(rows)
    if text:
        print("\n" + text)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
