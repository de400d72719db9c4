"""The `lodestore` commands on a sharded root: `shard create`, and build/add/delete/compact/info/verify/search.

lodestore/cli.py hands a command here when its store argument is a sharded root (it holds
sharded.json), or when `build --shards N` creates one; the arguments are the same as for one store.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from lodestore._cli_args import load_queries
from lodestore.store import CorruptStoreError

#: the commands that take a sharded root in place of a store
COMMANDS = ("build", "add", "delete", "compact", "info", "verify", "search")


def _store_options(args: argparse.Namespace) -> dict:
    return {"nbits": args.nbits, "codec": args.codec, "pq_subspaces": args.pq_subspaces,
            "num_centroids": args.centroids, "seed": args.seed}


def cmd_shard_create(args: argparse.Namespace) -> int:
    from ._store import ShardedStore

    with ShardedStore.create(args.root, n_shards=args.shards, dim=args.dim, locations=args.location or None,
                             resources=args.resource or None, **_store_options(args)) as s:
        print(f"created {s}")
        for entry in s.manifest.shards:
            print(f"  {entry.name}  {entry.path}" + (f"  (Ray resource {entry.resource})" if entry.resource else ""))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from lodestore.store import open_source

    from ._manifest import is_sharded_root
    from ._store import ShardedStore

    if is_sharded_root(args.store):
        store = ShardedStore.open(args.store, writable=True)
    else:
        dim = open_source(Path(args.embeddings), None).dim
        store = ShardedStore.create(args.store, n_shards=args.shards, dim=dim, **_store_options(args))
    with store:
        generations = store.add_embeddings(args.embeddings, progress=not args.quiet)
        print(f"committed generations {generations}: {store}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from ._store import ShardedStore

    with ShardedStore.open(args.store, writable=True) as store:
        generations = store.add_embeddings(args.embeddings, upsert=args.upsert, progress=not args.quiet)
        print(f"committed generations {generations}: {store}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from ._store import ShardedStore

    with ShardedStore.open(args.store, writable=True) as store:
        print(f"committed generations {store.delete(args.ids)}: {store}")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from ._store import ShardedStore

    with ShardedStore.open(args.store, writable=True) as store:
        before = store.generations
        after = store.compact()
        print(f"nothing to compact: {store}" if after == before else f"committed generations {after}: {store}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from lodestore.cli import _human

    from ._store import ShardedStore

    with ShardedStore.open(args.store) as store:
        s = store.stats()
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    codec = s["codec"]
    rows = [("path", s["path"]), ("shards", s["shards"]), ("documents", f"{s['documents']:,}"),
            ("deleted", f"{s['deleted']:,}"), ("tokens", f"{s['tokens']:,}"), ("dim", s["dim"]),
            ("codec", "none yet (trained at the first add)" if codec is None else
             f"{codec['kind']}, {codec['num_centroids']:,} centroids, {codec['identity'][:20]}..."),
            ("routing", "blake2b-64 of the id, mod shards"), ("bytes on disk", _human(s["bytes_on_disk"]))]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("\nshard       generation   documents      tokens  bytes on disk  path")
    for p in s["per_shard"]:
        print(f"{p['shard']:<10}  {p['generation']:>10}  {p['documents']:>10,}  {p['tokens']:>10,}  "
              f"{_human(p['bytes_on_disk']):>13}  {p['path']}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ._store import ShardedStore, ShardedVerifyReport

    try:
        with ShardedStore.open(args.store) as store:
            report = store.verify()
    except CorruptStoreError as e:  # a root or shard manifest is damaged: opening already fails
        report = ShardedVerifyReport(failures=[str(e)])
    print(report)
    print("OK" if report.ok else "CORRUPT: restore the named shard from a backup or rebuild it")
    return 0 if report.ok else 1


def cmd_search(args: argparse.Namespace) -> int:
    from ._searcher import ShardedSearcher

    queries = load_queries(args.queries)
    with ShardedSearcher(args.store, ray_address=args.ray_address, memory_budget=args.memory_budget) as searcher:
        results = searcher.search(list(queries), k=args.k, allow_partial=args.allow_partial)
    if args.json:
        print(json.dumps([{"hits": [{"id": i, "score": float(s)} for i, s in hits], "partial": hits.partial,
                           "missing": list(hits.missing), "generations": hits.generations} for hits in results]))
        return 0
    for qi, hits in enumerate(results):
        gens = " ".join(f"{n}@{g}" for n, g in hits.generations.items())
        print(f"query {qi}  (generations {gens})" + (f"  PARTIAL: missing {', '.join(hits.missing)}"
                                                     if hits.partial else ""))
        for rank, (doc_id, score) in enumerate(hits, 1):
            print(f"  {rank:>3}  {score:9.4f}  {doc_id}")
    return 0


def dispatch(args: argparse.Namespace) -> int:
    """Run a command on a sharded root."""
    return {"build": cmd_build, "add": cmd_add, "delete": cmd_delete, "compact": cmd_compact, "info": cmd_info,
            "verify": cmd_verify, "search": cmd_search}[args.command](args)


def add_parser(sub: argparse._SubParsersAction, add_codec_arguments) -> None:
    """`lodestore shard create ROOT --shards N --dim D [...]`."""
    p = sub.add_parser("shard", help="sharded stores: N stores behind one root, searched together (in-process or Ray)")
    ssub = p.add_subparsers(dest="shard_command", required=True)
    c = ssub.add_parser("create", help="create an empty sharded store (the codec is trained at the first add)")
    c.add_argument("root")
    c.add_argument("--shards", type=int, required=True, help="number of shards")
    c.add_argument("--dim", type=int, required=True, help="vector dimension")
    add_codec_arguments(c)
    c.add_argument("--centroids", type=int, default=None, help="number of k-means centroids (default: from corpus size)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--location", action="append", default=[],
                   help="a shard's store directory (repeat once per shard; default ROOT/shards/shard-NNN)")
    c.add_argument("--resource", action="append", default=[],
                   help="a shard's Ray custom resource: its actor runs on the node started with it (repeat per shard)")
    c.set_defaults(func=cmd_shard_create)

