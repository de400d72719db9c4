"""The text commands of `lodestore`: index (encode a BEIR corpus), query, eval, convert-model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lodestore._cli_args import add_codec_arguments, add_filter_arguments, add_mode_arguments, params
from lodestore.hybrid import DEFAULT_MODE


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
                            params=params(args))
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


def add_text_parsers(sub: argparse._SubParsersAction) -> None:
    """The index, query, eval and convert-model subcommands."""
    x = sub.add_parser("index", help="encode a BEIR collection's corpus (corpus.jsonl) into a text index")
    x.add_argument("store")
    x.add_argument("--collection", required=True, help="BEIR directory: corpus.jsonl, queries.jsonl, qrels/test.tsv")
    x.add_argument("--max-docs", type=int, default=None, help="index only the first N documents")
    x.add_argument("--encoder", default=None, help="directory with model.onnx, tokenizer.json, encoder.json (default: packaged MiniLM)")
    x.add_argument("--embeddings", default=None,
                   help="a bundle of these documents already encoded by the same encoder (tools/encode_collection): no re-encoding")
    add_codec_arguments(x)
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
    add_mode_arguments(q, DEFAULT_MODE)
    add_filter_arguments(q)
    q.set_defaults(func=cmd_query)

    e = sub.add_parser("eval", help="nDCG@10, R@100, MRR@10 of the engine and of exhaustive MaxSim on a BEIR collection")
    e.add_argument("store")
    e.add_argument("--collection", required=True)
    e.add_argument("--queries", type=int, default=None, help="evaluate only the first N judged queries")
    e.add_argument("--no-exhaustive", action="store_true", help="skip the exhaustive run (slow on big stores)")
    e.add_argument("--memory-budget", default="auto")
    e.add_argument("--encoder", default=None, help="the encoder directory the index was built with (default: packaged MiniLM)")
    e.add_argument("--json", action="store_true")
    add_mode_arguments(e, "maxsim")
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("convert-model", help="turn a PyLate / sentence-transformers or Stanford ColBERT checkpoint "
                       "directory into an encoder directory for --encoder (lodestore[convert])")
    m.add_argument("src", help="checkpoint directory (local; nothing is downloaded)")
    m.add_argument("out", help="new (or empty) directory for model.onnx, tokenizer.json, encoder.json")
    m.add_argument("--quantize", choices=("int8",), default=None, help="int8 weights (onnxruntime dynamic quantization)")
    m.set_defaults(func=cmd_convert_model)
