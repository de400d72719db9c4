"""The `lodestore` command line: build, add, delete, compact, info, verify, search; index, query, eval (text)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lodestore.hybrid import DEFAULT_FUSION, DEFAULT_MODE, FUSIONS, MODES
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

    queries = np.load(args.queries)
    if queries.ndim == 2:
        queries = queries[None]
    with Searcher(args.store, memory_budget=args.memory_budget) as searcher:
        results = searcher.search(queries, k=args.k, where=args.where, params=_params(args))
    if args.json:
        print(json.dumps([[{"id": i, "score": float(s)} for i, s in hits] for hits in results]))
        return 0
    for qi, hits in enumerate(results):
        print(f"query {qi}")
        for rank, (doc_id, score) in enumerate(hits, 1):
            print(f"  {rank:>3}  {score:9.4f}  {doc_id}")
    return 0


def _params(args: argparse.Namespace) -> list | None:
    """--param values: a JSON number, true/false or "quoted string" is that value; anything else the text itself."""
    if args.where is None:
        if args.param:
            raise ValueError("--param given without --where")
        return None
    out = []
    for text in args.param:
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out.append(value if isinstance(value, (int, float, str, bool)) else text)
    return out


def _add_filter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--where", default=None,
                   help="only documents whose metadata match, e.g. \"year >= ? AND lang = ?\" (README: metadata filters)")
    p.add_argument("--param", action="append", default=[], metavar="VALUE",
                   help="the value of the next '?' (repeat in order): 2019, 1.5, true, \"2019\" (a string), or other text")


def cmd_index(args: argparse.Namespace) -> int:
    from .collection import Collection
    from .index import DEFAULT_DIM, DEFAULT_POOL_FACTOR, Index
    from lodestore.text import Encoder

    col = Collection.load(args.collection, args.max_docs)
    if col.skipped_empty:
        print(f"skipping {col.skipped_empty} document(s) with no text", file=sys.stderr)
    encoder = Encoder.from_dir(args.encoder, intra_op_num_threads=args.threads) if args.encoder \
        else Encoder.default(intra_op_num_threads=args.threads)
    path = Path(args.store)
    if path.exists() and any(path.iterdir()):
        index = Index.open(path, encoder, writable=True)
    else:
        index = Index.create(path, encoder, nbits=args.nbits, codec=args.codec, pq_subspaces=args.pq_subspaces,
                             reduction=args.reduction,
                             dim=DEFAULT_DIM if args.dim is None else args.dim,
                             num_centroids=args.centroids, seed=args.seed,
                             pool_factor=DEFAULT_POOL_FACTOR if args.pool_factor is None else args.pool_factor)
    with index:
        new = [d for d in col.docs if d["_id"] not in index.store]
        if len(new) < len(col.docs):
            print(f"{len(col.docs) - len(new)} document(s) already indexed: adding the other {len(new)}", file=sys.stderr)
        if not new:
            print(f"nothing to add: {index}")
            return 0
        ids, texts, titles = [d["_id"] for d in new], [d.get("text") or "" for d in new], [d.get("title") or "" for d in new]
        if args.embeddings:
            generation = index.add_encoded(args.embeddings, ids, texts, titles=titles, progress=not args.quiet,
                                           pool_factor=args.pool_factor)
        else:
            generation = index.add(ids, texts, titles=titles, batch_size=args.batch, progress=not args.quiet,
                                   pool_factor=args.pool_factor)
        print(f"committed generation {generation}: {index}")
    return 0


def _encoder_arg(args: argparse.Namespace) -> object:
    """The --encoder directory's Encoder, or None (the one the index records: the packaged MiniLM)."""
    if not getattr(args, "encoder", None):
        return None
    from lodestore.text import Encoder

    return Encoder.from_dir(args.encoder)


def cmd_query(args: argparse.Namespace) -> int:
    from .index import Index

    with Index.open(args.store, _encoder_arg(args), memory_budget=args.memory_budget) as index:
        hits = index.search(args.text, k=args.k, mode=args.mode, fusion=args.fusion, where=args.where,
                            params=_params(args))
    if args.json:
        print(json.dumps([{"rank": r, "id": h.id, "score": h.score, "title": h.title, "text": h.text,
                           "metadata": h.metadata} for r, h in enumerate(hits, 1)], ensure_ascii=False))
        return 0
    print(f"{'rank':>4}  {'score':>7}  id")
    for rank, h in enumerate(hits, 1):
        print(f"{rank:>4}  {h.score:7.3f}  {h.id}  {h.title}")
        print(f"{'':>15}{h.snippet(args.words)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .collection import Collection
    from .evaluate import MEASURES, evaluate
    from .index import Index

    col = Collection.load(args.collection)
    with Index.open(args.store, _encoder_arg(args), memory_budget=args.memory_budget) as index:
        missing = sum(d["_id"] not in index.store for d in col.docs)
        if missing:
            print(f"warning: {missing} document(s) of the collection are not in the index", file=sys.stderr)
        results = evaluate(index, col, exhaustive=not args.no_exhaustive, max_queries=args.queries,
                           mode=args.mode, fusion=args.fusion)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'run':<11}" + "".join(f"{m:>9}" for m in MEASURES) + f"{'queries':>9}{'ms/q':>9}")
    for name, r in results.items():
        if name == "engine" and args.mode != "maxsim":
            name = args.mode if args.mode == "bm25" else f"hybrid-{args.fusion}"
        print(f"{name:<11}" + "".join(f"{r[m]:9.4f}" for m in MEASURES) + f"{r['queries']:9d}{r['ms_per_query']:9.1f}")
    if "exhaustive" in results:
        gap = results["exhaustive"]["nDCG@10"] - results["engine"]["nDCG@10"]
        if abs(gap) < 5e-5:
            print("engine nDCG@10 equals that of exhaustive MaxSim over the same store")
        else:
            print(f"engine nDCG@10 is {abs(gap):.4f} {'below' if gap > 0 else 'above'} exhaustive MaxSim over the same store")
    return 0


def cmd_convert_model(args: argparse.Namespace) -> int:
    from lodestore.text.convert import convert_model

    try:
        report = convert_model(args.src, args.out, quantize=args.quantize)
    except ImportError as e:  # the optional extra is missing: one line, as for serve
        raise ValueError(str(e)) from None
    print("\n".join(report.lines()))
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


def _add_codec_arguments(p: argparse.ArgumentParser) -> None:
    """--codec / --nbits / --pq-subspaces, as Store.create takes them (store/_codecs.py resolves them)."""
    p.add_argument("--codec", choices=("scalar", "pq"), default=None,
                   help="residual codec (default: scalar if --nbits is given, pq if --pq-subspaces is, else the library default)")
    p.add_argument("--nbits", type=int, default=None, choices=(1, 2, 4), help="scalar codec: bits per dimension (default 2)")
    p.add_argument("--pq-subspaces", type=int, default=None, choices=(16, 32, 64),
                   help="pq codec: bytes per token residual (default: the most that fit in dim/4 bytes)")


def _add_mode_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """--mode / --fusion, as Index.search takes them (lodestore/hybrid.py)."""
    p.add_argument("--mode", choices=MODES, default=default,
                   help=f"maxsim (token vectors), bm25 (keywords) or hybrid (both fused; default {default})")
    p.add_argument("--fusion", choices=FUSIONS, default=DEFAULT_FUSION,
                   help=f"hybrid: rrf (reciprocal rank) or score (normalized scores); default {DEFAULT_FUSION}")


_METADATA_HELP = "JSONL file: one metadata object per document, in the bundle's order (typed fields for --where)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lodestore", description="Disk-offloaded late-interaction retrieval store.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build (or extend) a store from an embedding bundle or a directory of .npy files")
    b.add_argument("store")
    b.add_argument("--embeddings", required=True, help="bundle dir (docs.npy, doclens.npy[, ids.txt]) or dir of .npy files")
    _add_codec_arguments(b)
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
    _add_filter_arguments(s)
    s.set_defaults(func=cmd_search)

    x = sub.add_parser("index", help="encode a BEIR collection's corpus (corpus.jsonl) into a text index")
    x.add_argument("store")
    x.add_argument("--collection", required=True, help="BEIR directory: corpus.jsonl, queries.jsonl, qrels/test.tsv")
    x.add_argument("--max-docs", type=int, default=None, help="index only the first N documents")
    x.add_argument("--encoder", default=None, help="directory with model.onnx, tokenizer.json, encoder.json (default: packaged MiniLM)")
    x.add_argument("--embeddings", default=None,
                   help="a bundle of these documents already encoded by the same encoder (tools/encode_collection): no re-encoding")
    _add_codec_arguments(x)
    x.add_argument("--dim", type=int, default=None, help="store vectors reduced to this dimension by --reduction (default: lodestore.index.DEFAULT_DIM; the encoder's dim keeps them whole)")
    x.add_argument("--reduction", default="pca", choices=("pca", "random"))
    x.add_argument("--centroids", type=int, default=None)
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--pool-factor", type=int, default=None,
                   help="token pooling: store ~1/N of each document's vectors (cluster means; default: "
                        "lodestore.index.DEFAULT_POOL_FACTOR); an existing index keeps its own and refuses another")
    x.add_argument("--batch", type=int, default=32, help="documents per model call")
    x.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    x.add_argument("--quiet", action="store_true")
    x.set_defaults(func=cmd_index)

    q = sub.add_parser("query", help="search a text index with a text query and print the ranked documents")
    q.add_argument("store")
    q.add_argument("text")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--words", type=int, default=25, help="words of each document's text to show")
    q.add_argument("--memory-budget", default="auto")
    q.add_argument("--encoder", default=None, help="the encoder directory the index was built with (default: packaged MiniLM)")
    q.add_argument("--json", action="store_true")
    _add_mode_arguments(q, DEFAULT_MODE)
    _add_filter_arguments(q)
    q.set_defaults(func=cmd_query)

    e = sub.add_parser("eval", help="nDCG@10, R@100, MRR@10 of the engine and of exhaustive MaxSim on a BEIR collection")
    e.add_argument("store")
    e.add_argument("--collection", required=True)
    e.add_argument("--queries", type=int, default=None, help="evaluate only the first N judged queries")
    e.add_argument("--no-exhaustive", action="store_true", help="skip the exhaustive run (slow on big stores)")
    e.add_argument("--memory-budget", default="auto")
    e.add_argument("--encoder", default=None, help="the encoder directory the index was built with (default: packaged MiniLM)")
    e.add_argument("--json", action="store_true")
    _add_mode_arguments(e, "maxsim")
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("convert-model", help="turn a PyLate / sentence-transformers or Stanford ColBERT checkpoint "
                       "directory into an encoder directory for --encoder (lodestore[convert])")
    m.add_argument("src", help="checkpoint directory (local; nothing is downloaded)")
    m.add_argument("out", help="new (or empty) directory for model.onnx, tokenizer.json, encoder.json")
    m.add_argument("--quantize", choices=("int8",), default=None, help="int8 weights (onnxruntime dynamic quantization)")
    m.set_defaults(func=cmd_convert_model)

    _add_serve_parser(sub)
    from lodestore.sharded._cli import add_parser as add_shard_parser

    add_shard_parser(sub, _add_codec_arguments)
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
