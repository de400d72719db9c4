"""Choosing the metadata filter evaluator: lodestore's expression compiler over numpy columns vs SQLite.

    nice -n 10 python -m tools.measure_filter_eval [--docs 100000,1000000] [--repeat 9]

For each size it makes synthetic metadata (year int, lang str of 8 values, score float,
tags: 0-3 of 20 strings; fixed seed) and times the same filters both ways, each producing
the boolean mask over all documents the engine needs:
  numpy:  MetadataColumns (what a segment holds resident) + compile_where(...).mask(columns)
  sqlite: an in-memory table (rowid, year, lang, score) with an index on each column and a
          (doc, tag) table with an index, queried with bound parameters; rowids -> mask.
Reported: median milliseconds per filter (compile + evaluate), resident bytes per document
(numpy: the columns' nbytes; sqlite: page_count x page_size of the database), and the build
time of each. docs/BENCHMARKS.md "Metadata filters: choosing the evaluator" records a run.
"""

from __future__ import annotations

import argparse
import sqlite3
import time

import numpy as np

FILTERS = [
    ("year >= ? AND lang = ?", (2015, "l3"), "year >= ? AND lang = ?"),
    ("score < ?", (0.001,), "score < ?"),
    ("lang IN (?, ?) OR score > ?", ("l1", "l2", 0.9), "lang IN (?, ?) OR score > ?"),
    ("tags CONTAINS ? AND year < ?", ("t7", 2000),
     "EXISTS (SELECT 1 FROM tags WHERE tags.doc = m.rowid AND tags.tag = ?) AND year < ?"),
    ("NOT (lang = ?) AND score BETWEEN ? AND ?", ("l0", 0.25, 0.75), "NOT (lang = ?) AND score BETWEEN ? AND ?"),
]


def make(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    years = rng.integers(1980, 2025, n).tolist()
    langs = rng.integers(0, 8, n).tolist()
    scores = rng.random(n).tolist()
    ntags = rng.integers(0, 4, n).tolist()
    tags = rng.integers(0, 20, int(sum(ntags))).tolist()
    out, t = [], 0
    for i in range(n):
        out.append({"year": years[i], "lang": f"l{langs[i]}", "score": scores[i],
                    "tags": [f"t{x}" for x in tags[t:t + ntags[i]]]})
        t += ntags[i]
    return out


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def run(n: int, repeat: int) -> list[str]:
    from lodestore.store import MetadataColumns, compile_where

    docs = make(n)
    t0 = time.perf_counter()
    cols, schema = MetadataColumns.from_dicts(docs, n, {})
    build_np = time.perf_counter() - t0
    t0 = time.perf_counter()
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE m (year INTEGER, lang TEXT, score REAL)")
    db.execute("CREATE TABLE tags (doc INTEGER, tag TEXT)")
    db.executemany("INSERT INTO m (rowid, year, lang, score) VALUES (?, ?, ?, ?)",
                   ((i, d["year"], d["lang"], d["score"]) for i, d in enumerate(docs)))
    db.executemany("INSERT INTO tags VALUES (?, ?)", ((i, t) for i, d in enumerate(docs) for t in d["tags"]))
    for col in ("year", "lang", "score"):
        db.execute(f"CREATE INDEX m_{col} ON m ({col})")
    db.execute("CREATE INDEX tags_tag ON tags (tag, doc)")
    db.commit()
    build_sql = time.perf_counter() - t0
    sql_bytes = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    del docs

    rows = []
    for ours, params, sql in FILTERS:
        def numpy_mask():
            return compile_where(ours, params, schema).mask(cols)

        def sqlite_mask():
            mask = np.zeros(n, dtype=bool)
            got = db.execute(f"SELECT rowid FROM m WHERE {sql}", params).fetchall()
            mask[np.fromiter((r[0] for r in got), dtype=np.int64, count=len(got))] = True
            return mask

        a, b = numpy_mask(), sqlite_mask()
        assert np.array_equal(a, b), ours
        rows.append(f"| {n:,} | `{ours}` | {a.mean():.2%} | {median_ms(numpy_mask, repeat):.2f} | "
                    f"{median_ms(sqlite_mask, repeat):.2f} |")
    db.close()
    rows.append(f"| {n:,} | resident bytes / document | | {cols.nbytes / n:.1f} | {sql_bytes / n:.1f} |")
    rows.append(f"| {n:,} | build seconds (from dicts) | | {build_np:.2f} | {build_sql:.2f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", default="100000,1000000")
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args(argv)
    print("| documents | filter | selectivity | numpy ms | sqlite ms |")
    print("|---|---|---|---|---|")
    for n in (int(x) for x in args.docs.split(",")):
        for row in run(n, args.repeat):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
