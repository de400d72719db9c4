"""BEIR-layout test collections: corpus.jsonl, queries.jsonl, qrels/test.tsv.

    corpus.jsonl    {"_id": str, "title": str, "text": str}, one per line
    queries.jsonl   {"_id": str, "text": str}, one per line
    qrels/test.tsv  header "query-id<TAB>corpus-id<TAB>score", then one judged pair per line
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_qrels(path: Path) -> list[tuple[str, str, int]]:
    """(query id, doc id, relevance) rows of a BEIR qrels file."""
    rows = []
    with open(path, encoding="utf-8") as f:
        next(f)  # header: query-id, corpus-id, score
        for line in f:
            if line.strip():
                q, d, s = line.rstrip("\n").split("\t")
                rows.append((q, d, int(s)))
    return rows


def doc_text(doc: dict) -> str:
    """What the encoder reads: "title. text" (BEIR convention), or the text alone."""
    title, text = doc.get("title") or "", doc.get("text") or ""
    return f"{title}. {text}" if title else text


@dataclass
class Collection:
    """A loaded collection: documents with text, the judged test queries, and their judgements."""

    path: Path
    docs: list[dict]
    queries: dict[str, str]  # judged test queries only, in id order of the qrels
    qrels: list[tuple[str, str, int]]
    skipped_empty: int

    @classmethod
    def load(cls, path: str | Path, max_docs: int | None = None) -> "Collection":
        """Read a BEIR directory; documents with no text are skipped (and counted)."""
        path = Path(path)
        for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
            if not (path / name).is_file():
                raise ValueError(f"{path}: not a BEIR collection (no {name})")
        corpus = read_jsonl(path / "corpus.jsonl")[:max_docs]
        docs = [d for d in corpus if doc_text(d).strip()]
        kept = {d["_id"] for d in docs}
        qrels = [r for r in read_qrels(path / "qrels" / "test.tsv") if r[1] in kept]
        texts = {q["_id"]: q["text"] for q in read_jsonl(path / "queries.jsonl")}
        judged = sorted({q for q, _, s in qrels if s > 0 and q in texts})
        return cls(path, docs, {q: texts[q] for q in judged}, qrels, len(corpus) - len(docs))
