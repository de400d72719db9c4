"""Write a synthetic embedding bundle: the on-disk input of the demo, benchmarks and big tests.

    python -m tools.make_bundle OUT_DIR --tokens 1000000 --dim 128 --queries 200 --seed 0 [--dtype float16]

OUT_DIR receives
  docs.npy           (total_tokens, dim) float16/float32 unit rows, in document order
  doclens.npy        (n_docs,) int64 tokens per document
  ids.txt            one document id a line ("doc000123"), in document order
  queries.npy        (n_queries, q_len, dim) float32 unit rows
  query_ids.txt      one query id a line
  query_targets.npy  (n_queries,) int64 index of the document each query was made from
  bundle.json        sizes, dtype and every generator parameter

Documents come from `store.testing.synthetic.iter_corpus_chunks` and are taken
until the token target is reached, so the corpus matches the in-memory
generator for the same parameters. docs.npy is written chunk by chunk through a
memory map of just that chunk's rows, and queries read only their target rows
back from it, so memory stays at a few hundred MB for any corpus size.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from lodestore.store.testing import synthetic

FORMAT = "lodestore-embedding-bundle"
FORMAT_VERSION = 1


def _count(text: str) -> int:
    """An integer count that may be written as 1e6."""
    value = float(text)
    if value != int(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a non-negative whole number: {text}")
    return int(value)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: output folder, corpus size and generator parameters."""
    p = argparse.ArgumentParser(prog="python -m tools.make_bundle", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path, help="folder to write the bundle into (created if missing)")
    p.add_argument("--tokens", type=_count, default=1_000_000, help="token target; documents are added until reached")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=_count, default=200)
    p.add_argument("--q-len", type=int, default=32, help="tokens per query")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="of docs.npy")
    p.add_argument("--n-clusters", type=int, default=None, help="default: 2*sqrt(total tokens)")
    p.add_argument("--mean-len", type=int, default=80)
    p.add_argument("--min-len", type=int, default=30)
    p.add_argument("--max-len", type=int, default=300)
    p.add_argument("--noise", type=float, default=1.0, help="query token noise norm")
    p.add_argument("--noise-spread", type=float, default=1.0, help="lognormal sigma of the per-query noise factor")
    p.add_argument("--noise-tokens", type=int, default=2, help="pure-noise tokens ending each query")
    p.add_argument("--chunk-docs", type=int, default=synthetic.DEFAULT_CHUNK_DOCS, help="documents per write")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.tokens < 1:
        p.error("--tokens must be at least 1")
    return args


def write_docs(
    path: Path, n_tokens: int, dim: int, dtype: str, chunks: Iterable[tuple[np.ndarray, np.ndarray]], progress: tqdm
) -> None:
    """Write chunks of rows into a new .npy of shape (n_tokens, dim).

    The file is created with open_memmap; each chunk then maps only its own
    rows, so the pages it dirtied leave this process when the map is dropped
    and resident memory does not grow with the file. It is written under a
    temporary name and renamed at the end, so a reader that has the old file
    mapped keeps a consistent copy.
    """
    partial = path.with_name(path.name + ".partial")
    header = open_memmap(partial, mode="w+", dtype=dtype, shape=(n_tokens, dim))
    offset, row_bytes = header.offset, dim * np.dtype(dtype).itemsize
    del header
    row = 0
    for docs, _ in chunks:
        window = np.memmap(partial, dtype=dtype, mode="r+", offset=offset + row * row_bytes, shape=docs.shape)
        window[:] = docs
        window.flush()
        del window
        row += len(docs)
        progress.update(len(docs))
    if row != n_tokens:
        raise RuntimeError(f"generator produced {row} rows, expected {n_tokens}")
    os.replace(partial, path)


def write_lines(path: Path, prefix: str, n: int) -> None:
    """n ids, prefix + zero-padded index (at least 6 digits), one a line."""
    width = max(6, len(str(max(n - 1, 0))))
    path.write_text("".join(f"{prefix}{i:0{width}d}\n" for i in range(n)))


def write_corpus(out: Path, args: argparse.Namespace) -> tuple[np.ndarray, int]:
    """docs.npy, doclens.npy and ids.txt; returns (doclens, n_clusters used)."""
    corpus = dict(n_tokens=args.tokens, mean_len=args.mean_len, min_len=args.min_len, max_len=args.max_len)
    doclens = synthetic.corpus_doclens(**corpus, seed=args.seed)
    n_tokens = int(doclens.sum())
    n_clusters = args.n_clusters or synthetic.default_n_clusters(n_tokens)
    chunks = synthetic.iter_corpus_chunks(
        dim=args.dim, n_clusters=n_clusters, seed=args.seed, chunk_docs=args.chunk_docs, **corpus
    )
    with tqdm(total=n_tokens, unit="tok", unit_scale=True, desc="docs", disable=args.quiet) as progress:
        write_docs(out / "docs.npy", n_tokens, args.dim, args.dtype, chunks, progress)
    np.save(out / "doclens.npy", doclens)
    write_lines(out / "ids.txt", "doc", len(doclens))
    return doclens, n_clusters


def write_queries(out: Path, args: argparse.Namespace, doclens: np.ndarray) -> None:
    """queries.npy, query_targets.npy and query_ids.txt, reading target rows from docs.npy."""
    docs = np.load(out / "docs.npy", mmap_mode="r")
    queries, targets = synthetic.make_queries(
        docs,
        doclens,
        args.queries,
        args.q_len,
        noise=args.noise,
        noise_spread=args.noise_spread,
        n_noise_tokens=args.noise_tokens,
        seed=args.seed,
    )
    np.save(out / "queries.npy", queries)
    np.save(out / "query_targets.npy", targets)
    write_lines(out / "query_ids.txt", "q", args.queries)


def bundle_meta(args: argparse.Namespace, doclens: np.ndarray, n_clusters: int) -> dict:
    """The contents of bundle.json: sizes, dtype and every generator parameter."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "generator": "lodestore.store.testing.synthetic",
        "n_docs": len(doclens),
        "n_tokens": int(doclens.sum()),
        "dim": args.dim,
        "dtype": args.dtype,
        "n_queries": args.queries,
        "q_len": args.q_len,
        "params": {
            "target_tokens": args.tokens,
            "seed": args.seed,
            "n_clusters": n_clusters,
            "mean_len": args.mean_len,
            "min_len": args.min_len,
            "max_len": args.max_len,
            "query_noise": args.noise,
            "query_noise_spread": args.noise_spread,
            "query_noise_tokens": args.noise_tokens,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the bundle described by argv into its output folder."""
    args = parse_args(argv)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    doclens, n_clusters = write_corpus(out, args)
    write_queries(out, args, doclens)
    (out / "bundle.json").write_text(json.dumps(bundle_meta(args, doclens, n_clusters), indent=2) + "\n")
    if not args.quiet:
        print(f"wrote {len(doclens)} docs, {int(doclens.sum())} tokens, {args.queries} queries to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
