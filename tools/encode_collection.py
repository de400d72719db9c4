"""Encode a BEIR-layout collection into an embedding bundle with the project's encoder.

    python -m tools.encode_collection COLLECTION OUT [--max-docs N] [--batch 32] [--threads 2]

COLLECTION has corpus.jsonl ({_id, title, text}), queries.jsonl ({_id, text})
and qrels/test.tsv. OUT receives docs.npy (float16), doclens.npy, ids.txt,
queries.npy (the judged test queries, float32), query_ids.txt, qrels.tsv (the
test judgements, restricted to encoded documents) and bundle.json. Documents
are encoded in slices and appended to docs.npy, so memory stays bounded by one
slice; the same real vectors then feed every engine in a comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from lodestore.collection import Collection, doc_text

SLICE_DOCS = 512


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.encode_collection", description=__doc__.split("\n")[0])
    p.add_argument("collection", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--max-docs", type=int, default=None, help="encode only the first N documents")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from lodestore.text import Encoder
    from tqdm import tqdm

    col = Collection.load(args.collection, args.max_docs)
    corpus, qrels, queries, judged = col.docs, col.qrels, col.queries, list(col.queries)

    enc = Encoder.default(intra_op_num_threads=args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lens, tokens = [], 0
    with open(args.out / "docs.raw", "wb") as raw:
        for s in tqdm(range(0, len(corpus), SLICE_DOCS), desc="documents", unit="slice"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # truncation warnings: counted in bundle.json instead
                vecs = enc.encode_documents([doc_text(d) for d in corpus[s : s + SLICE_DOCS]], batch_size=args.batch)
            for v in vecs:
                raw.write(v.astype(np.float16).tobytes())
                lens.append(len(v))
                tokens += len(v)
    doc_s = time.perf_counter() - t0
    docs = np.memmap(args.out / "docs.raw", dtype=np.float16, mode="r", shape=(tokens, enc.dim))
    out = np.lib.format.open_memmap(args.out / "docs.npy", mode="w+", dtype=np.float16, shape=(tokens, enc.dim))
    for s in range(0, tokens, 1 << 18):
        out[s : s + (1 << 18)] = docs[s : s + (1 << 18)]
    out.flush()
    del out, docs
    (args.out / "docs.raw").unlink()
    np.save(args.out / "doclens.npy", np.array(lens, dtype=np.int64))
    (args.out / "ids.txt").write_text("".join(d["_id"] + "\n" for d in corpus), encoding="utf-8")
    t1 = time.perf_counter()
    np.save(args.out / "queries.npy", enc.encode_queries([queries[q] for q in judged]).astype(np.float32))
    query_s = time.perf_counter() - t1
    (args.out / "query_ids.txt").write_text("".join(q + "\n" for q in judged), encoding="utf-8")
    with open(args.out / "qrels.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t{s}\n" for q, d, s in qrels)
    info = {"format": "lodestore-embedding-bundle", "source": str(args.collection), "encoder": enc.identity(),
            "n_docs": len(corpus), "n_tokens": tokens, "dim": enc.dim, "n_queries": len(judged),
            "doc_tokens_per_s": tokens / doc_s, "query_s": query_s}
    (args.out / "bundle.json").write_text(json.dumps(info, indent=2))
    print(f"{len(corpus)} docs, {tokens:,} token vectors in {doc_s:.0f} s ({tokens / doc_s:,.0f}/s); "
          f"{len(judged)} queries in {query_s:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
