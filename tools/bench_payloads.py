"""Where should document text live? The store's payload arrays vs an embedded SQLite file.

    python -m tools.bench_payloads STORE [--lookups 200] [--k 10]
    python -m tools.bench_payloads --collection DIR [--lookups 200] [--k 10]

STORE is a text index (lodestore index); with --collection the tool builds, in a
temp dir, a store holding that BEIR corpus's payloads exactly as the Index
writes them, with 8-d placeholder vectors (payload arrays do not depend on the
vectors), so no encoding is needed. Copies every payload into a SQLite
table (id TEXT PRIMARY KEY, payload BLOB) beside it in a temp dir, then times
fetching the payloads of k random documents, `--lookups` times, both ways
(page cache warm), and prints bytes on disk and ms per k-document fetch.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _open(args: argparse.Namespace, tmp: Path):
    """The store to measure: the one given, or one built from --collection's payloads."""
    from lodestore.store import Store

    if args.store is not None:
        return Store.open(args.store)
    import warnings

    from lodestore.collection import Collection
    from lodestore.index import document_payloads

    docs = Collection.load(args.collection).docs
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few tokens: small codec
        with Store.create(tmp / "store", dim=8, num_centroids=16) as store:
            store.add([d["_id"] for d in docs], [rng.normal(size=(2, 8)) for _ in docs],
                      payloads=document_payloads([d.get("text") or "" for d in docs], [d.get("title") or "" for d in docs],
                                         [{} for _ in docs]))
    return Store.open(tmp / "store")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_payloads", description=__doc__.split("\n")[0])
    p.add_argument("store", type=Path, nargs="?")
    p.add_argument("--collection", type=Path, default=None)
    p.add_argument("--lookups", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)

    from lodestore.store import Store

    if (args.store is None) == (args.collection is None):
        p.error("give a STORE or --collection DIR")
    with tempfile.TemporaryDirectory() as tmp, _open(args, Path(tmp)) as store:
        ids = store.ids()
        payloads = store.payloads(ids)
        if all(x is None for x in payloads):
            raise SystemExit(f"{args.store}: no payloads stored")
        db_path = Path(tmp) / "payloads.sqlite"
        db = sqlite3.connect(db_path)
        db.execute("CREATE TABLE docs (id TEXT PRIMARY KEY, payload BLOB)")
        db.executemany("INSERT INTO docs VALUES (?, ?)", zip(ids, payloads))
        db.commit()
        rng = np.random.default_rng(0)
        picks = [[ids[i] for i in rng.choice(len(ids), args.k, replace=False)] for _ in range(args.lookups)]
        store_bytes = sum(store.stats()["array_bytes"].get(n, 0) for n in ("payload_offsets", "payload_bytes"))
        raw = sum(len(x or b"") for x in payloads)
        rows = []
        t0 = time.perf_counter()
        for pick in picks:
            got = store.payloads(pick)
        rows.append(("store payload arrays (gzip, CRC32C)", store_bytes, 1000 * (time.perf_counter() - t0) / len(picks)))
        t0 = time.perf_counter()
        for pick in picks:
            marks = ",".join("?" * len(pick))
            found = dict(db.execute(f"SELECT id, payload FROM docs WHERE id IN ({marks})", pick).fetchall())
            got2 = [found[i] for i in pick]
        rows.append(("SQLite table (no checksums)", os.path.getsize(db_path), 1000 * (time.perf_counter() - t0) / len(picks)))
        assert got == got2
        db.close()
    print(f"\n{len(ids):,} documents, {raw / 1e6:.1f} MB of payload; {args.lookups} fetches of {args.k} random documents "
          f"(load {os.getloadavg()[0]:.1f})\n")
    print("| where | bytes on disk | vs raw | ms per fetch |")
    print("|---|---|---|---|")
    for name, size, ms in rows:
        print(f"| {name} | {size / 1e6:.2f} MB | {size / raw:.2f} | {ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
