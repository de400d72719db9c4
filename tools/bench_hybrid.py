"""Retrieval quality and cost of the Index's search modes: maxsim, bm25, hybrid (rrf and score fusion).

    nice -n 10 python -m tools.bench_hybrid [--data /work/shared/data] [--work /work/bench/hybrid]
        [--collections scifact cranfield medline] [--max-docs scifact=2000] [--bundle NAME=DIR] [--json OUT]

For each BEIR collection: its corpus (the first N documents with --max-docs NAME=N;
the judged queries are then those with a relevant document among them) is encoded
ONCE with the packaged encoder into WORK/NAME/bundle (tools/encode_collection;
reused when present, or taken from --bundle NAME=DIR, another run's bundle of the
same documents: Index.add_encoded refuses one made by another encoder or of other
documents), indexed into WORK/NAME/index with Index's defaults (reused when present), and its judged
test queries encoded once; every mode then ranks the same query vectors/texts
to depth 100. Prints one markdown table: nDCG@10 and R@100 per mode (ir-measures),
ms per query of each mode, and the keyword index's cost: the stored postings'
bytes per document on disk (FORMAT.md 8.6), the seconds a fresh process takes
from opening the store to the answer of its first bm25 query (after importing
lodestore, bm25s and PyStemmer, timed apart), with the stored postings and with
them derived from the text (median of FRESH_RUNS processes each), and the
resident bytes per document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

RUNS = (("maxsim", "maxsim", "rrf"), ("bm25", "bm25", "rrf"), ("hybrid-rrf", "hybrid", "rrf"),
        ("hybrid-score", "hybrid", "score"))
DEPTH = 100
FRESH_RUNS = 3
K10_QUERIES = 100  # queries timed one at a time at k = 10 through Index.search (query encoding included)
#: A fresh process's first bm25 query: argv = store path, "stored" or "derived", query text.
FIRST_QUERY = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import bm25s, Stemmer  # what either way costs alike: the query is tokenized by them
    from lodestore.keyword import KeywordIndex
    from lodestore.store import Store
    t1 = time.perf_counter()
    with Store.open(sys.argv[1]) as store:
        hits = KeywordIndex(store, stored=sys.argv[2] == "stored").search([sys.argv[3]], 10)
    t2 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "first_query_s": t2 - t1, "hits": len(hits[0])}))
""")


def ensure_index(collection: Path, work: Path, threads: int, max_docs: int | None, bundle: Path | None) -> Path:
    """WORK/bundle (encoded once) and WORK/index (built once) for a collection; the index path."""
    from lodestore import Index
    from lodestore.collection import Collection

    bundle, index_path = bundle or work / "bundle", work / "index"
    if not (bundle / "bundle.json").exists():
        limit = ["--max-docs", str(max_docs)] if max_docs else []
        subprocess.run([sys.executable, "-m", "tools.encode_collection", str(collection), str(bundle),
                        "--threads", str(threads)] + limit, check=True)
    if not index_path.exists():
        Index.create(index_path).close()
    with Index.open(index_path, writable=True) as index:
        if not len(index):  # new, or an earlier build was interrupted before its commit
            col = Collection.load(collection, max_docs)
            index.add_encoded(bundle, [d["_id"] for d in col.docs], [d.get("text") or "" for d in col.docs],
                              titles=[d.get("title") or "" for d in col.docs])
    return index_path


def first_query_seconds(index_path: Path, source: str, query: str) -> tuple[float, float]:
    """Median seconds, over FRESH_RUNS new processes, (from opening the store to the top 10 of a first bm25
    query, of the imports before it), with the segments' postings `source` = "stored" (read) or "derived"
    (tokenized from the text)."""
    runs = []
    for _ in range(FRESH_RUNS):
        proc = subprocess.run([sys.executable, "-c", FIRST_QUERY, str(index_path), source, query], check=True,
                              capture_output=True, text=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return statistics.median(r["first_query_s"] for r in runs), statistics.median(r["import_s"] for r in runs)


def stored_postings_bytes(index) -> int:
    """Bytes on disk of the keyword postings arrays (FORMAT.md 8.6) of every segment."""
    return sum(size for name, size in index.store.stats()["array_bytes"].items() if name.startswith("keyword_"))


def bench(collection: Path, work: Path, threads: int, max_docs: int | None = None, bundle: Path | None = None) -> dict:
    """The table row values of one collection."""
    from lodestore import Index
    from lodestore.collection import Collection
    from lodestore.evaluate import measure

    index_path = ensure_index(collection, work, threads, max_docs, bundle)
    col = Collection.load(collection, max_docs)
    qids = list(col.queries)
    texts = [col.queries[q] for q in qids]
    out: dict = {"collection": collection.name, "docs": len(col.docs), "queries": len(qids)}
    out["first_query_stored_s"], out["import_s"] = first_query_seconds(index_path, "stored", texts[0])
    out["first_query_derived_s"], _ = first_query_seconds(index_path, "derived", texts[0])
    with Index.open(index_path, memory_budget="all") as index:
        vectors = index.query_vectors(texts)
        keyword = index.keyword  # from the stored postings (derived for segments without)
        out["stored_bytes_per_doc"] = stored_postings_bytes(index) / max(len(index), 1)
        out["keyword_bytes_per_doc"] = keyword.nbytes / max(len(index), 1)
        out["terms"] = len(keyword.vocab)
        out["term_table_bytes_per_doc"] = (sys.getsizeof(keyword.vocab) + sum(sys.getsizeof(t) + 28 for t in keyword.vocab)
                                           ) / max(len(index), 1)  # the dict, each str key and its int id
        index.searcher.search(vectors[:4], k=DEPTH)  # warm the searcher's resident index
        for name, mode, fusion in RUNS:
            t0 = time.perf_counter()
            results = index.ranked(texts, DEPTH, mode=mode, fusion=fusion, vectors=vectors)
            ms = 1000 * (time.perf_counter() - t0) / len(qids)
            scores = measure(qids, results, col.qrels)
            out[name] = {"nDCG@10": scores["nDCG@10"], "R@100": scores["R@100"], "ms_per_query": ms}
        for name, mode, fusion in RUNS:  # what a user's k = 10 query costs in each mode, round robin
            out[name]["k10_ms"] = []
        for text in texts[:K10_QUERIES]:
            for name, mode, fusion in RUNS:
                t0 = time.perf_counter()
                index.search(text, k=10, mode=mode, fusion=fusion)
                out[name]["k10_ms"].append(1000 * (time.perf_counter() - t0))
        for name, _, _ in RUNS:
            out[name]["k10_ms"] = statistics.median(out[name]["k10_ms"])
    return out


def table(rows: list[dict]) -> str:
    """The markdown table of bench() rows."""
    head = ["collection", "docs", "queries"] + [f"{n} nDCG@10 / R@100" for n, _, _ in RUNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["collection"], f"{r['docs']:,}", str(r["queries"])]
        cells += [f"{r[n]['nDCG@10']:.4f} / {r[n]['R@100']:.4f}" for n, _, _ in RUNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| collection | " + " | ".join(f"{n} ms at k=10 (vs maxsim)" for n, _, _ in RUNS) + " |",
              "|" + "---|" * (len(RUNS) + 1)]
    for r in rows:
        base = r["maxsim"]["k10_ms"]
        lines.append(f"| {r['collection']} | " + " | ".join(f"{r[n]['k10_ms']:.1f} (x{r[n]['k10_ms'] / base:.2f})"
                                                            for n, _, _ in RUNS) + " |")
    lines += ["", "| collection | " + " | ".join(f"{n} ms/query" for n, _, _ in RUNS)
              + " | fresh process: imports s | first bm25 query, stored s | derived s"
              " | stored postings B / doc on disk | resident postings B / doc | term table B / doc | terms |",
              "|" + "---|" * (len(RUNS) + 8)]
    for r in rows:
        cells = [r["collection"]] + [f"{r[n]['ms_per_query']:.2f}" for n, _, _ in RUNS]
        cells += [f"{r['import_s']:.3f}", f"{r['first_query_stored_s']:.3f}", f"{r['first_query_derived_s']:.3f}",
                  f"{r['stored_bytes_per_doc']:,.0f}", f"{r['keyword_bytes_per_doc']:,.0f}",
                  f"{r['term_table_bytes_per_doc']:,.0f}", f"{r['terms']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_hybrid", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    p.add_argument("--work", type=Path, default=Path("/work/bench/hybrid"))
    p.add_argument("--collections", nargs="+", default=["scifact", "cranfield", "medline"])
    p.add_argument("--threads", type=int, default=2, help="encoder threads (the one-time encoding)")
    p.add_argument("--max-docs", nargs="*", default=[], metavar="NAME=N", help="index only a collection's first N documents")
    p.add_argument("--bundle", nargs="*", default=[], metavar="NAME=DIR", help="a collection's bundle made elsewhere")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    max_docs = {k: int(v) for k, v in (a.split("=", 1) for a in args.max_docs)}
    bundles = {k: Path(v) for k, v in (a.split("=", 1) for a in args.bundle)}
    rows = [bench(args.data / name, args.work / name, args.threads, max_docs.get(name), bundles.get(name))
            for name in args.collections]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
