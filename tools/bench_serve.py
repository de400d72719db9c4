"""Load test of `lodestore serve` on loopback: concurrent clients, a writer, and the HTTP overhead.

    python -m tools.bench_serve [--store PATH] [--clients 1,4,16] [--workers 1,2] [--seconds 20 | --requests N]

For every (workers, clients) pair it starts `lodestore serve` on a free
127.0.0.1 port (never another address), waits until /ready, reads the server's
idle RSS (the uvicorn process and its workers, from /proc), then runs `clients`
threads, each with one keep-alive connection, searching for `--seconds` (or
until `--requests` searches in all), while a writer thread adds a probe
document and deletes it again, one commit each, every `--write-every` seconds.
Then it stops: nothing runs unbounded.

Every answer is checked against the generation it reports: a search for a probe
document's own vectors must return it exactly when that generation holds it
(the writer records which generations do). Errors (any non-200, or a failed
check) must be zero; the tool exits 1 otherwise.

Reported per run: searches/s, p50/p95/p99 latency per endpoint (search, add,
delete), errors, server RSS idle and the most seen under load; and, once, the
HTTP overhead per query at 1 client: the p50 through the server minus the p50
of the same queries with lodestore.Searcher in-process (and the server's own
search time, took_ms, which separates HTTP and JSON from the search itself).

Without --store it builds a synthetic vector store (--docs documents, dim 128) in
a temporary directory. The figures belong in docs/BENCHMARKS.md, not in code.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- store and server


def build_store(path: Path, docs: int, dim: int) -> list[np.ndarray]:
    """A synthetic vector store of `docs` documents plus 8 probe documents kept out of it; returns the probes."""
    import lodestore
    from lodestore.store.testing.synthetic import make_corpus

    tokens, lens = make_corpus(docs + 8, dim, mean_len=60, min_len=16, max_len=160, seed=11)
    offs = np.concatenate([[0], np.cumsum(lens)])
    all_docs = [tokens[offs[i]:offs[i + 1]] for i in range(len(lens))]
    with lodestore.Store.create(path, dim=dim, nbits=2, seed=1) as store:
        store.add([f"d{i}" for i in range(docs)], all_docs[:docs])
    return all_docs[docs:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, todo, page = 0, [pid], os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            pass
        todo += children.get(p, [])
    return total


class Server:
    def __init__(self, store: Path, workers: int, log: Path):
        self.port = free_port()
        cmd = [sys.executable, "-m", "lodestore.cli", "serve", str(store), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", str(workers), "--log-level", "warning"]
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {log}")
            try:
                status, _ = request(http.client.HTTPConnection("127.0.0.1", self.port, timeout=5), "GET", "/ready")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server was not ready in time; see {log}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def request(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def matrix(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"b64": base64.b64encode(a.tobytes()).decode("ascii"), "shape": list(a.shape)}


# --------------------------------------------------------------------------- one run


def run(port: int, server_pid: int, clients: int, seconds: float, max_requests: int | None, queries: list[np.ndarray],
        probe: np.ndarray, write_every: float, k: int) -> dict:
    lat: dict[str, list[float]] = {"search": [], "add": [], "delete": []}
    took: list[float] = []  # the server's own search time (took_ms), to split off the HTTP part
    errors: list[str] = []
    live: dict[int, bool] = {}  # generation -> does it hold the probe document
    lock = threading.Lock()
    stop = threading.Event()
    issued = [0]
    bodies = [json.dumps({"vectors": matrix(q), "k": k}).encode() for q in queries]
    probe_body = json.dumps({"vectors": matrix(probe), "k": k}).encode()
    seen: list[tuple[int, bool]] = []  # (generation, probe found) of probe searches
    rss_max = [0]

    def reader(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = n
        while not stop.is_set():
            with lock:
                if max_requests is not None and issued[0] >= max_requests:
                    break
                issued[0] += 1
            is_probe = bool(write_every) and i % 4 == 0  # probe searches only while a writer runs
            body = probe_body if is_probe else bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/search", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                answer = json.loads(resp.read())
            except (OSError, http.client.HTTPException, ValueError) as e:
                errors.append(f"search: {e!r}")
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            elapsed = time.perf_counter() - t0
            if resp.status != 200:
                errors.append(f"search: HTTP {resp.status} {answer}")
                continue
            lat["search"].append(elapsed)
            took.append(answer["took_ms"])
            if is_probe:
                seen.append((answer["generation"], any(h["id"] == "probe" for h in answer["hits"])))
            i += clients

    def writer() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        present = False
        while not stop.wait(write_every):
            kind = "delete" if present else "add"
            t0 = time.perf_counter()
            try:
                if present:
                    status, answer = request(conn, "DELETE", "/documents", {"ids": ["probe"]})
                else:
                    status, answer = request(conn, "POST", "/documents", {"ids": ["probe"], "vectors": [matrix(probe)]})
            except (OSError, http.client.HTTPException, ValueError) as e:
                errors.append(f"{kind}: {e!r}")
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            if status != 200:
                errors.append(f"{kind}: HTTP {status} {answer}")
                continue
            lat[kind].append(time.perf_counter() - t0)
            present = not present
            live[answer["generation"]] = present

    def sampler() -> None:
        while not stop.wait(0.5):
            rss_max[0] = max(rss_max[0], tree_rss(server_pid))

    # the generation before any write: the probe is not there
    _, first = request(http.client.HTTPConnection("127.0.0.1", port, timeout=30), "GET", "/ready")
    live[first["generation"]] = False
    threads = [threading.Thread(target=reader, args=(n,)) for n in range(clients)]
    threads += [threading.Thread(target=sampler)] + ([threading.Thread(target=writer)] if write_every else [])
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    deadline = t0 + seconds
    while time.perf_counter() < deadline and not stop.is_set():
        if not any(t.is_alive() for t in threads[:clients]):  # the readers met --requests
            break
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for generation, found in seen:
        if generation not in live:
            errors.append(f"answer from unknown generation {generation}")
        elif found != live[generation]:
            errors.append(f"generation {generation}: probe {'found' if found else 'missing'} but it "
                          f"{'is not' if not live[generation] else 'is'} in that generation")
    out = {"clients": clients, "searches": len(lat["search"]), "wall_s": wall, "qps": len(lat["search"]) / wall,
           "writes": len(lat["add"]) + len(lat["delete"]), "generations_seen": len({g for g, _ in seen}),
           "checked": len(seen), "errors": len(errors), "error_samples": errors[:5], "rss_load_mb": rss_max[0] / 2**20}
    out["took_p50_ms"] = float(np.percentile(took, 50)) if took else float("nan")
    for name, values in lat.items():
        if values:
            ms = np.array(values) * 1000
            out[name] = {q: float(np.percentile(ms, p)) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}
    return out


def in_process_p50(store: Path, queries: list[np.ndarray], k: int, rounds: int) -> float:
    import lodestore

    with lodestore.Searcher(store) as searcher:
        for q in queries[:5]:
            searcher.search(q, k=k)
        times = []
        for _ in range(rounds):
            for q in queries:
                t0 = time.perf_counter()
                searcher.search(q, k=k)
                times.append(time.perf_counter() - t0)
    return float(np.percentile(np.array(times) * 1000, 50))


def measure_overhead(base: Path, tmp_path: Path, queries: list[np.ndarray], probe: np.ndarray, k: int) -> dict:
    """p50 of the same queries through a 1-worker server (1 client, no writer) and with the library in-process."""
    store = tmp_path / "overhead"
    shutil.copytree(base, store)
    server = Server(store, 1, tmp_path / "server.log")
    try:
        r = run(server.port, server.proc.pid, 1, 600.0, 3 * len(queries), queries, probe, 0.0, k)
    finally:
        server.stop()
    lib = in_process_p50(store, queries, k, rounds=3)
    return {"http_p50_ms": r["search"]["p50"], "server_search_p50_ms": r["took_p50_ms"], "library_p50_ms": lib,
            "overhead_ms": r["search"]["p50"] - lib, "errors": r["errors"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, help="a vector store to copy and serve (default: a synthetic one)")
    p.add_argument("--docs", type=int, default=2000, help="documents of the synthetic store")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each run (upper bound)")
    p.add_argument("--requests", type=int, default=None, help="stop each run after this many searches")
    p.add_argument("--write-every", type=float, default=0.5, help="seconds between the writer's commits")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    from lodestore.store.testing.synthetic import make_queries

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tmp_path = Path(tmp)
        base = tmp_path / "base"
        if args.store:
            shutil.copytree(args.store, base)
            import lodestore

            with lodestore.Store.open(base) as s:
                dim = s.input_dim
                sample = [s.get(i) for i in s.ids()[:200]]
            rng = np.random.default_rng(0)
            probe = rng.standard_normal((40, dim)).astype(np.float32)
        else:
            dim = 128
            probes = build_store(base, args.docs, dim)
            probe = probes[0]
            import lodestore

            with lodestore.Store.open(base) as s:
                sample = [s.get(i) for i in s.ids()[:200]]
        tokens = np.concatenate(sample)
        lens = np.array([len(d) for d in sample])
        queries = list(make_queries(tokens, lens, 32, 32, seed=3)[0])
        results = []
        for w in workers:
            for c in clients:
                store = tmp_path / f"w{w}c{c}"
                shutil.copytree(base, store)
                server = Server(store, w, tmp_path / "server.log")
                try:
                    time.sleep(1.0)
                    idle = tree_rss(server.proc.pid)
                    r = run(server.port, server.proc.pid, c, args.seconds, args.requests, queries, probe,
                            args.write_every, args.k)
                finally:
                    server.stop()
                r.update(workers=w, rss_idle_mb=idle / 2**20)
                results.append(r)
                print(json.dumps(r), flush=True)
        overhead = measure_overhead(base, tmp_path, queries, probe, args.k)
        if (tmp_path / "server.log").exists() and any(r["errors"] for r in results):
            print((tmp_path / "server.log").read_text(errors="replace")[-3000:], file=sys.stderr)
    print()
    print("| workers | clients | searches/s | search p50 / p95 / p99 ms | add p50 ms | delete p50 ms | writes | "
          "generations seen | errors | RSS idle / load MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s = r.get("search", {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")})
        add = r.get("add", {}).get("p50", float("nan"))
        delete = r.get("delete", {}).get("p50", float("nan"))
        print(f"| {r['workers']} | {r['clients']} | {r['qps']:.1f} | {s['p50']:.1f} / {s['p95']:.1f} / {s['p99']:.1f} | "
              f"{add:.1f} | {delete:.1f} | {r['writes']} | {r['generations_seen']} | {r['errors']} | "
              f"{r['rss_idle_mb']:.0f} / {r['rss_load_mb']:.0f} |")
    if overhead:
        print(f"\nHTTP overhead at 1 client (1 worker, no writer): p50 {overhead['http_p50_ms']:.2f} ms "
              f"through the server (of which {overhead['server_search_p50_ms']:.2f} ms searching in the server) vs "
              f"{overhead['library_p50_ms']:.2f} ms in-process = {overhead['overhead_ms']:.2f} ms per query")
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "overhead": overhead}, indent=1))
    failed = sum(r["errors"] for r in results) + overhead["errors"]
    if failed:
        print(f"\n{failed} errors", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
