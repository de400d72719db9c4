"""Retrieval quality and cost of the Index's search modes: maxsim, bm25, hybrid (rrf and score fusion).

    nice -n 10 python -m tools.bench_hybrid [--data ../shared/data] [--work /work/bench/hybrid]
        [--collections scifact cranfield medline] [--json OUT]

For each BEIR collection: its corpus is encoded ONCE with the packaged encoder
into WORK/NAME/bundle (tools/encode_collection, reused when present), indexed
into WORK/NAME/index with Index's defaults (reused when present), and its judged
test queries encoded once; every mode then ranks the same query vectors/texts
to depth 100. Prints one markdown table: nDCG@10 and R@100 per mode (ir-measures),
ms per query of each mode, and the keyword index's cost (seconds to derive it
from the stored text per 1000 documents, resident bytes per document).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RUNS = (("maxsim", "maxsim", "rrf"), ("bm25", "bm25", "rrf"), ("hybrid-rrf", "hybrid", "rrf"),
        ("hybrid-score", "hybrid", "score"))
DEPTH = 100


def ensure_index(collection: Path, work: Path, threads: int) -> Path:
    """WORK/bundle (encoded once) and WORK/index (built once) for a collection; the index path."""
    from lodestore import Index
    from lodestore.collection import Collection

    bundle, index_path = work / "bundle", work / "index"
    if not (bundle / "bundle.json").exists():
        subprocess.run([sys.executable, "-m", "tools.encode_collection", str(collection), str(bundle),
                        "--threads", str(threads)], check=True)
    if not index_path.exists():
        col = Collection.load(collection)
        with Index.create(index_path) as index:
            index.add_encoded(bundle, [d["_id"] for d in col.docs], [d.get("text") or "" for d in col.docs],
                              titles=[d.get("title") or "" for d in col.docs])
    return index_path


def bench(collection: Path, work: Path, threads: int) -> dict:
    """The table row values of one collection."""
    from lodestore import Index
    from lodestore.collection import Collection
    from lodestore.evaluate import measure

    index_path = ensure_index(collection, work, threads)
    col = Collection.load(collection)
    qids = list(col.queries)
    texts = [col.queries[q] for q in qids]
    out: dict = {"collection": collection.name, "docs": len(col.docs), "queries": len(qids)}
    with Index.open(index_path, memory_budget="all") as index:
        vectors = index.query_vectors(texts)
        t0 = time.perf_counter()
        keyword = index.keyword  # derived from the stored text on first use
        out["derive_s_per_1k_docs"] = 1000 * (time.perf_counter() - t0) / max(len(index), 1)
        out["keyword_bytes_per_doc"] = keyword.nbytes / max(len(index), 1)
        out["terms"] = len(keyword.vocab)
        index.searcher.search(vectors[:4], k=DEPTH)  # warm the searcher's resident index
        for name, mode, fusion in RUNS:
            t0 = time.perf_counter()
            results = index.ranked(texts, DEPTH, mode=mode, fusion=fusion, vectors=vectors)
            ms = 1000 * (time.perf_counter() - t0) / len(qids)
            scores = measure(qids, results, col.qrels)
            out[name] = {"nDCG@10": scores["nDCG@10"], "R@100": scores["R@100"], "ms_per_query": ms}
    return out


def table(rows: list[dict]) -> str:
    """The markdown table of bench() rows."""
    head = ["collection", "docs", "queries"] + [f"{n} nDCG@10 / R@100" for n, _, _ in RUNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["collection"], f"{r['docs']:,}", str(r["queries"])]
        cells += [f"{r[n]['nDCG@10']:.4f} / {r[n]['R@100']:.4f}" for n, _, _ in RUNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| collection | " + " | ".join(f"{n} ms/query" for n, _, _ in RUNS)
              + " | keyword index: derive s / 1k docs | resident B / doc | terms |",
              "|" + "---|" * (len(RUNS) + 4)]
    for r in rows:
        cells = [r["collection"]] + [f"{r[n]['ms_per_query']:.2f}" for n, _, _ in RUNS]
        cells += [f"{r['derive_s_per_1k_docs']:.2f}", f"{r['keyword_bytes_per_doc']:,.0f}", f"{r['terms']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_hybrid", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--work", type=Path, default=Path("/work/bench/hybrid"))
    p.add_argument("--collections", nargs="+", default=["scifact", "cranfield", "medline"])
    p.add_argument("--threads", type=int, default=2, help="encoder threads (the one-time encoding)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    rows = [bench(args.data / name, args.work / name, args.threads) for name in args.collections]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
