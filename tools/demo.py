"""`make demo`: index 300 SciFact abstracts from text, query them, evaluate; then the embedding API.

    python -m tools.demo [--dir demo-store] [--tokens 60000] [--text-docs 300] [--skip-text]

Part 1 indexes the sample carried in tools/data/scifact-sample with the packaged
encoder, runs a few of its real test claims as queries and prints the ranked
abstracts, then scores all 40 judged claims (nDCG@10, engine vs exhaustive).
Part 2 builds a store from a generated embedding bundle and searches it with a
2 MB memory budget. A fresh clone has everything: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n")[0])
    p.add_argument("--dir", type=Path, default=Path("demo-store"))
    p.add_argument("--tokens", type=int, default=60_000)
    p.add_argument("--text-docs", type=int, default=None, help="index only the first N sample abstracts (tests)")
    p.add_argument("--skip-text", action="store_true", help="only the embedding part (no encoder)")
    args = p.parse_args(argv)
    if args.dir.exists():
        shutil.rmtree(args.dir)
    if not args.skip_text:
        text_demo(args.dir / "scifact-index", args.text_docs)
    embedding_demo(args.dir, args.tokens)
    return 0


SAMPLE = Path(__file__).parent / "data" / "scifact-sample"
DEMO_QUERIES = 3


def text_demo(path: Path, max_docs: int | None = None) -> None:
    """Index the bundled SciFact sample from text, show a few real queries, evaluate all judged ones."""
    import warnings

    from lodestore import cli
    from lodestore.collection import Collection

    col = Collection.load(SAMPLE, max_docs)
    print(f"A. lodestore index {path} --collection {SAMPLE}   ({len(col.docs)} abstracts, packaged MiniLM encoder)")
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long abstracts are cut to 300 tokens: expected here
        cli.main(["index", str(path), "--collection", str(SAMPLE), "--quiet"]
                 + (["--max-docs", str(max_docs)] if max_docs else []))
    print(f"   indexed in {time.perf_counter() - t:.1f} s")
    relevant = {}
    for q, d, s in col.qrels:
        relevant.setdefault(q, set()).add(d)
    for qid in list(col.queries)[:DEMO_QUERIES]:
        print(f"\nB. lodestore query {path} \"{col.queries[qid]}\" -k 3     (judged relevant: {', '.join(sorted(relevant[qid]))})")
        cli.main(["query", str(path), col.queries[qid], "-k", "3", "--words", "20"])
    print(f"\nC. lodestore eval {path} --collection {SAMPLE}   ({len(col.queries)} judged claims)")
    cli.main(["eval", str(path), "--collection", str(SAMPLE)])


def embedding_demo(root: Path, tokens: int) -> None:
    """Build a store from a generated embedding bundle, show it, verify it, search it."""
    import lodestore
    from lodestore import cli
    from tools import make_bundle

    bundle, path = root / "bundle", root / "store"
    print(f"\n1. generating a synthetic embedding bundle ({tokens:,} tokens, d=128) in {bundle}")
    make_bundle.main([str(bundle), "--tokens", str(tokens), "--queries", "20", "--seed", "0"])

    print(f"\n2. lodestore build {path} --embeddings {bundle}")
    t = time.perf_counter()
    cli.main(["build", str(path), "--embeddings", str(bundle)])
    print(f"   built in {time.perf_counter() - t:.1f} s")

    print(f"\n3. lodestore info {path}")
    cli.main(["info", str(path)])

    print(f"\n4. lodestore verify {path}")
    cli.main(["verify", str(path)])

    queries = np.load(bundle / "queries.npy")
    targets = np.load(bundle / "query_targets.npy")
    ids = (bundle / "ids.txt").read_text().splitlines()
    print(f"\n5. searching {len(queries)} queries (each made from one document's tokens) with a 2 MB memory budget"
          " (token rows and centroid ids read from disk per query)")
    with lodestore.Store.open(path) as store, lodestore.Searcher(store, memory_budget="2MB") as searcher:
        found = agree = 0
        for qi, q in enumerate(queries):
            hits = searcher.search(q, k=10)
            exact = lodestore.exhaustive_search(store, q, k=10)
            agree += len({h[0] for h in hits} & {h[0] for h in exact})
            found += hits[0][0] == ids[targets[qi]]
            if qi < 3:
                print(f"   query {qi} (made from {ids[targets[qi]]}):")
                for rank, (doc_id, score) in enumerate(hits[:3], 1):
                    print(f"      {rank}. {doc_id}  MaxSim {score:.3f}")
        s = searcher.stats()
        print(f"   source document ranked first: {found}/{len(queries)}")
        print(f"   recall@10 against exhaustive MaxSim over the store: {agree / (10 * len(queries)):.3f}")
        print(f"   placement: {s['placement']['name']}, engine memory {s['resident_bytes'] / 1e6:.1f} MB, "
              f"row-cache hit rate {s['hit_rate']:.2f}, {s['bytes_read'] / len(queries) / 1e3:.0f} KB read from the store per query")


if __name__ == "__main__":
    sys.exit(main())
