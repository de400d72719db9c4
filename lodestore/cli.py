"""The `lodestore` command line: build, add, delete, compact, info, verify, search, serve (the text commands:
lodestore/_cli_text.py; sharded roots: lodestore/sharded/_cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from lodestore._cli_args import add_codec_arguments, add_filter_arguments, load_queries, params
from lodestore._cli_text import add_text_parsers
from lodestore.store import CorruptStoreError, Store, StoreError, VerifyReport


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _metadata(args: argparse.Namespace) -> list | None:
    """--metadata FILE: one JSON object a line, in the bundle's document order (None without the option)."""
    if args.metadata is None:
        return None
    with open(args.metadata, encoding="utf-8") as f:
        out = []
        for n, line in enumerate(f, 1):
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{args.metadata}: line {n} is not JSON ({e})") from None
    return out


def cmd_build(args: argparse.Namespace) -> int:
    path = Path(args.store)
    metadata = _metadata(args)
    if path.exists() and any(path.iterdir()):
        store = Store.open(path, writable=True)
    else:
        dim = _bundle_dim(Path(args.embeddings))
        store = Store.create(path, dim=dim, nbits=args.nbits, codec=args.codec, pq_subspaces=args.pq_subspaces,
                             num_centroids=args.centroids, seed=args.seed,
                             pool_factor=1 if args.pool_factor is None else args.pool_factor)
    with store:
        generation = store.add_embeddings(args.embeddings, metadata=metadata, progress=not args.quiet,
                                          pool_factor=args.pool_factor)
        print(f"committed generation {generation}: {store}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    metadata = _metadata(args)
    with Store.open(args.store, writable=True) as store:
        generation = store.add_embeddings(args.embeddings, metadata=metadata, upsert=args.upsert,
                                          progress=not args.quiet)
        print(f"committed generation {generation}: {store}")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    with Store.open(args.store, writable=True) as store:
        before = store.generation
        generation = store.compact()
        if generation == before:
            print(f"nothing to compact (one segment, no deletions): {store}")
        else:
            print(f"committed generation {generation}: {store}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with Store.open(args.store, writable=True) as store:
        generation = store.delete(args.ids)
        print(f"committed generation {generation}: {store}")
    return 0


def _bundle_dim(path: Path) -> int:
    from lodestore.store import open_source

    return open_source(path, None).dim


def cmd_info(args: argparse.Namespace) -> int:
    with Store.open(args.store) as store:
        s = store.stats()
        encoder = store.manifest.encoder
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
    if s["input_dim"] != s["dim"]:
        rows.insert(8, ("reduction", f"{s['reduction']} {s['input_dim']} -> {s['dim']}"))
    if s["pool_factor"] > 1:
        rows.insert(8, ("token pooling", f"pool factor {s['pool_factor']} (documents keep ~1/{s['pool_factor']} of their tokens)"))
    if encoder:
        cfg = encoder.get("config", {})
        rows.append(("encoder", f"model sha256 {str(encoder.get('model_sha256'))[:12]}..., dim {cfg.get('dim')}, "
                                f"query length {cfg.get('query_length')}, doc max length {cfg.get('doc_max_length')}"))
    drift = s["drift"]
    if drift["far_fraction"] is not None:  # stores written before the drift figure have none
        rows.append(("tokens far from every centroid",
                     f"{drift['far_fraction']:.2%} (training data: {drift['expected_fraction']:.0%}; "
                     "many times that: rebuild to retrain)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("\ndisk size per array")
    for name, size in s["array_bytes"].items():
        if name.startswith("payload") and not size:
            continue  # a store without text
        per = size / s["tokens"] if s["tokens"] else 0
        print(f"  {name:<15} {_human(size):>12}  {per:8.3f} B/token")
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
    from lodestore.engine import Searcher

    queries = load_queries(args.queries)
    with Searcher(args.store, memory_budget=args.memory_budget) as searcher:
        results = searcher.search(queries, k=args.k, where=args.where, params=params(args))
    if args.json:
        print(json.dumps([[{"id": i, "score": float(s)} for i, s in hits] for hits in results]))
        return 0
    for qi, hits in enumerate(results):
        print(f"query {qi}")
        for rank, (doc_id, score) in enumerate(hits, 1):
            print(f"  {rank:>3}  {score:9.4f}  {doc_id}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from lodestore.server import Limits, ServeConfig, read_api_keys, serve
    except ImportError as e:
        raise ValueError(f"serving needs the optional extra: pip install 'lodestore[serve]' ({e})") from None
    from dataclasses import fields

    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    if args.api_key_file:
        read_api_keys(args.api_key_file)  # a missing or empty key file is an error now, not in each worker
    with Store.open(args.store):  # a clear error for a path that is not a store, before any worker starts
        pass
    if args.encoder and not (Path(args.encoder) / "encoder.json").is_file():
        raise ValueError(f"{args.encoder}: not an encoder directory (no encoder.json)")
    config = ServeConfig(str(Path(args.store).resolve()), limits, read_only=args.read_only,
                         api_key_file=str(Path(args.api_key_file).resolve()) if args.api_key_file else None,
                         protect=args.protect, search_threads=args.search_threads, memory_budget=args.memory_budget,
                         encoder_dir=str(Path(args.encoder).resolve()) if args.encoder else None)
    serve(config, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    return 0


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    from dataclasses import fields

    from lodestore.server._config import Limits  # the dataclass only: no Starlette import

    s = sub.add_parser("serve", help="serve a store over HTTP: search API, writes, and a search page (lodestore[serve])")
    s.add_argument("store")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--workers", type=int, default=1, help="processes sharing the store on disk")
    s.add_argument("--api-key-file", help="file of API keys (one a line): writes need Authorization: Bearer <key>")
    s.add_argument("--protect", choices=["writes", "all"], default="writes",
                   help="with --api-key-file: what needs a key (all: everything but /health and /ready)")
    s.add_argument("--read-only", action="store_true", help="refuse every write (403)")
    s.add_argument("--search-threads", type=int, default=4, help="searches one worker runs at the same time")
    s.add_argument("--memory-budget", default=None, help="the Searcher's memory budget (default: its own)")
    s.add_argument("--encoder", default=None, help="a text index's encoder directory (default: packaged MiniLM)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    for f in fields(Limits):
        kind = int if isinstance(f.default, int) else float
        s.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, help=f"limit (default {f.default})")
    s.set_defaults(func=cmd_serve)


_METADATA_HELP = "JSONL file: one metadata object per document, in the bundle's order (typed fields for --where)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lodestore", description="Disk-offloaded late-interaction retrieval store.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build (or extend) a store from an embedding bundle or a directory of .npy files")
    b.add_argument("store")
    b.add_argument("--embeddings", required=True, help="bundle dir (docs.npy, doclens.npy[, ids.txt]) or dir of .npy files")
    add_codec_arguments(b)
    b.add_argument("--centroids", type=int, default=None, help="number of k-means centroids (default: from corpus size)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--shards", type=int, default=None, help="create a sharded store of N shards (lodestore.ShardedStore)")
    b.add_argument("--pool-factor", type=int, default=None,
                   help="token pooling: store ~1/N of each document's vectors (cluster means; default 1, none); "
                        "an existing store keeps its own and refuses another")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--metadata", default=None, help=_METADATA_HELP)
    b.set_defaults(func=cmd_build)

    a = sub.add_parser("add", help="add an embedding bundle or a directory of .npy files to an existing store (one commit)")
    a.add_argument("store")
    a.add_argument("--embeddings", required=True, help="bundle dir (docs.npy, doclens.npy[, ids.txt]) or dir of .npy files")
    a.add_argument("--upsert", action="store_true", help="replace documents whose ids are already in the store (same commit)")
    a.add_argument("--quiet", action="store_true")
    a.add_argument("--metadata", default=None, help=_METADATA_HELP)
    a.set_defaults(func=cmd_add)

    c = sub.add_parser("compact", help="merge all segments into one without the deleted documents (one commit)")
    c.add_argument("store")
    c.set_defaults(func=cmd_compact)

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
    s.add_argument("--memory-budget", default="auto", help="bytes, e.g. 64MB; 'auto' (the index; rows read through) or 'all'")
    s.add_argument("--json", action="store_true")
    s.add_argument("--ray-address", default=None, help="sharded root: search the shards as Ray actors ('local', 'auto' or an address)")
    s.add_argument("--allow-partial", action="store_true", help="sharded root: answer without shards that fail, naming them")
    add_filter_arguments(s)
    s.set_defaults(func=cmd_search)

    add_text_parsers(sub)
    _add_serve_parser(sub)
    from lodestore.sharded._cli import add_parser as add_shard_parser

    add_shard_parser(sub, add_codec_arguments)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from lodestore.sharded._cli import COMMANDS as SHARDED_COMMANDS, dispatch
        from lodestore.sharded._manifest import is_sharded_root

        if args.command in SHARDED_COMMANDS and (is_sharded_root(args.store) or getattr(args, "shards", None)):
            return dispatch(args)  # a sharded root (lodestore/sharded/_cli.py)
        return args.func(args)
    except (StoreError, ValueError, KeyError, OSError) as e:  # bad input or a bad store: one line, no traceback
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"lodestore {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
