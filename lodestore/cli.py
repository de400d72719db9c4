"""The `lodestore` command line: build, add, delete, info, verify, search."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from store import CorruptStoreError, Store, StoreError, VerifyReport


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def cmd_build(args: argparse.Namespace) -> int:
    path = Path(args.store)
    if path.exists() and any(path.iterdir()):
        store = Store.open(path, writable=True)
    else:
        dim = _bundle_dim(Path(args.embeddings))
        store = Store.create(path, dim=dim, nbits=args.nbits, codec=args.codec, pq_subspaces=args.pq_subspaces,
                             num_centroids=args.centroids, seed=args.seed)
    with store:
        generation = store.add_embeddings(args.embeddings, progress=not args.quiet)
        print(f"committed generation {generation}: {store}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    with Store.open(args.store, writable=True) as store:
        generation = store.add_embeddings(args.embeddings, progress=not args.quiet)
        print(f"committed generation {generation}: {store}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with Store.open(args.store, writable=True) as store:
        generation = store.delete(args.ids)
        print(f"committed generation {generation}: {store}")
    return 0


def _bundle_dim(path: Path) -> int:
    from store import open_source

    return open_source(path, None).dim


def cmd_info(args: argparse.Namespace) -> int:
    with Store.open(args.store) as store:
        s = store.stats()
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    rows = [
        ("path", s["path"]), ("format version", s["format_version"]), ("generation", s["generation"]),
        ("documents", f"{s['documents']:,}"), ("deleted", f"{s['deleted']:,}"), ("tokens", f"{s['tokens']:,}"),
        ("segments", s["segments"]), ("dim", s["dim"]),
        ("codec", f"pq, {s['pq_subspaces']} subspaces" if s["codec"] == "pq" else f"scalar, {s['nbits']} bits"),
        ("centroids", f"{s['centroids']:,}"),
        ("bytes on disk", _human(s["bytes_on_disk"])), ("bytes / token (all files)", f"{s['bytes_per_token']:.2f}"),
        ("bytes / token (token data)", f"{s['token_bytes_per_token']:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("\ndisk size per array")
    for name, size in s["array_bytes"].items():
        per = size / s["tokens"] if s["tokens"] else 0
        print(f"  {name:<12} {_human(size):>12}  {per:8.3f} B/token")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        with Store.open(args.store) as store:
            report = store.verify()
    except CorruptStoreError as e:  # the manifest or a deletion bitmap is damaged: opening already fails
        report = VerifyReport(failures=[str(e)])
    print(report)
    print("OK" if report.ok else "CORRUPT: restore this store from a backup or rebuild it")
    return 0 if report.ok else 1


def cmd_search(args: argparse.Namespace) -> int:
    from engine import Searcher

    queries = np.load(args.queries)
    if queries.ndim == 2:
        queries = queries[None]
    with Searcher(args.store, memory_budget=args.memory_budget) as searcher:
        results = searcher.search(queries, k=args.k)
    if args.json:
        print(json.dumps([[{"id": i, "score": float(s)} for i, s in hits] for hits in results]))
        return 0
    for qi, hits in enumerate(results):
        print(f"query {qi}")
        for rank, (doc_id, score) in enumerate(hits, 1):
            print(f"  {rank:>3}  {score:9.4f}  {doc_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lodestore", description="Disk-offloaded late-interaction retrieval store.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build (or extend) a store from an embedding bundle or a directory of .npy files")
    b.add_argument("store")
    b.add_argument("--embeddings", required=True, help="bundle dir (docs.npy, doclens.npy[, ids.txt]) or dir of .npy files")
    b.add_argument("--codec", choices=("scalar", "pq"), default=None,
                   help="residual codec (default: scalar if --nbits is given, pq if --pq-subspaces is, else the library default)")
    b.add_argument("--nbits", type=int, default=None, choices=(1, 2, 4), help="scalar codec: bits per dimension (default 2)")
    b.add_argument("--pq-subspaces", type=int, default=None, choices=(16, 32, 64),
                   help="pq codec: bytes per token residual (default: the most that fit in dim/4 bytes)")
    b.add_argument("--centroids", type=int, default=None, help="number of k-means centroids (default: from corpus size)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_build)

    a = sub.add_parser("add", help="add an embedding bundle or a directory of .npy files to an existing store (one commit)")
    a.add_argument("store")
    a.add_argument("--embeddings", required=True)
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=cmd_add)

    d = sub.add_parser("delete", help="delete documents by id (one commit)")
    d.add_argument("store")
    d.add_argument("ids", nargs="+")
    d.set_defaults(func=cmd_delete)

    i = sub.add_parser("info", help="sizes and parameters of a store")
    i.add_argument("store")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    v = sub.add_parser("verify", help="check every checksum; exit 1 on corruption")
    v.add_argument("store")
    v.set_defaults(func=cmd_verify)

    s = sub.add_parser("search", help="search with query embeddings from a .npy file ((q_len, dim) or (B, q_len, dim))")
    s.add_argument("store")
    s.add_argument("--queries", required=True)
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--memory-budget", default="auto", help="bytes, e.g. 64MB; 'auto' (index + codes + 4 MB cache) or 'all'")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_search)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (StoreError, ValueError, KeyError, FileExistsError) as e:
        print(f"lodestore {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
