"""Encoding throughput of the packaged encoder: document tokens/s and query latency.

    python -m tools.bench_encoder [--docs 120] [--batches 8,32] [--threads 1,2] [--collection DIR]

Encodes the first N abstracts of a BEIR collection (default: the bundled
SciFact sample) at each (threads, batch size) and prints one table: stored
token vectors per second (after punctuation is dropped), documents per second,
and ms per query for single queries. The row with the first thread count and
the first batch size is the baseline of the ratio column. Records the load
average: these machines are shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

SAMPLE = Path(__file__).parent / "data" / "scifact-sample"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_encoder", description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=120)
    p.add_argument("--batches", default="8,32")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--collection", type=Path, default=SAMPLE)
    args = p.parse_args(argv)

    from lodestore.text import Encoder
    from lodestore.collection import Collection, doc_text

    col = Collection.load(args.collection, args.docs)
    texts = [doc_text(d) for d in col.docs]
    queries = list(col.queries.values())[: args.queries] or texts[: args.queries]
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        enc = Encoder.default(intra_op_num_threads=threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # long abstracts are truncated: expected
            enc.encode_documents(texts[:4])  # warm-up: session start, first allocations
        for batch in (int(b) for b in args.batches.split(",")):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                vecs = enc.encode_documents(texts, batch_size=batch)
            sec = time.perf_counter() - t0
            t1 = time.perf_counter()
            for q in queries:
                enc.encode_queries([q])
            q_ms = 1000 * (time.perf_counter() - t1) / len(queries)
            tokens = sum(len(v) for v in vecs)
            rows.append((threads, batch, tokens / sec, len(texts) / sec, q_ms, tokens, os.getloadavg()[0]))
    base = rows[0][2]
    print(f"\n{len(texts)} documents of {args.collection}, {rows[0][5]:,} stored token vectors; "
          f"{len(queries)} single queries\n")
    print("| threads | batch | doc tokens/s | vs first row | docs/s | ms/query | load |")
    print("|---|---|---|---|---|---|---|")
    for threads, batch, tps, dps, q_ms, _, load in rows:
        print(f"| {threads} | {batch} | {tps:,.0f} | {tps / base:.2f} | {dps:.1f} | {q_ms:.1f} | {load:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
