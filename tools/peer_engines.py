"""Engine adapters for tools/bench_peers.py: lodestore and the engines a user would pick instead.

Every adapter has the same three steps, so the benchmark treats them alike:
  build(bundle, index_dir)   write an index of the bundle's document vectors
  open(index_dir, options)   load it for searching (options: search settings)
  search(query, k)           -> bundle document indices (ints), best first
and optionally search_batch(queries, k). `missing()` says why an engine cannot
run here (a peer not installed into .venv-peers, say) or returns None.

Peers are fed the bundle's own vectors (no model runs), as float32 unit rows,
one array per document, because that is what their APIs take; their document
ids are the bundle indices as strings. lodestore reads the bundle itself.
Peer imports happen inside the methods: the project venv has none of them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np


def bundle_dim(bundle: Path) -> int:
    return int(np.load(Path(bundle) / "docs.npy", mmap_mode="r").shape[1])


def load_docs(bundle: Path) -> list[np.ndarray]:
    """The bundle's documents as float32 unit-row arrays (views into one array)."""
    docs = np.asarray(np.load(Path(bundle) / "docs.npy", mmap_mode="r"), dtype=np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    lens = np.load(Path(bundle) / "doclens.npy").astype(np.int64)
    return np.split(docs, np.cumsum(lens)[:-1])


def _missing_modules(*names: str) -> str | None:
    absent = [n for n in names if importlib.util.find_spec(n) is None]
    return f"not installed ({', '.join(absent)}; run `make peers` and use .venv-peers/bin/python)" if absent else None


class Engine:
    """Base adapter; see the module docstring."""

    key = ""
    requires: tuple[str, ...] = ()

    def missing(self) -> str | None:
        return _missing_modules(*self.requires)

    def build(self, bundle: Path, index: Path) -> None:
        raise NotImplementedError

    def open(self, index: Path, options: dict) -> None:
        raise NotImplementedError

    def search(self, query: np.ndarray, k: int) -> list[int]:
        raise NotImplementedError

    def search_batch(self, queries: np.ndarray, k: int) -> list[list[int]] | None:
        return None  # no batch mode

    def stats(self) -> dict:
        """Engine counters to add to the row (lodestore: prefetch hit rate, bytes read)."""
        return {}

    def reset_stats(self) -> None:
        pass

    def store_path(self, index: Path) -> Path | None:
        """A lodestore store to compute search-only recall against (lodestore only)."""
        return None

    def data_path(self, index: Path) -> Path:
        """What counts as the index on disk (its bytes, and what a cold run evicts)."""
        return index


class Lodestore(Engine):
    """lodestore: `Store.create` + `add_embeddings` with the defaults a user gets (codec, K), `Searcher(budget)`.

    At d=128 the default codec is pq with 32 subspaces: 32 residual bytes per token,
    the same as PLAID's 2-bit residuals (docs/BENCHMARKS.md 8.4).
    """

    key = "lodestore"

    def build(self, bundle: Path, index: Path) -> None:
        import lodestore

        with lodestore.Store.create(index / "store", dim=bundle_dim(bundle)) as store:
            store.add_embeddings(bundle, progress=False)
        if (Path(bundle) / "ids.txt").exists():  # to map the store's ids back to bundle indices
            shutil.copyfile(Path(bundle) / "ids.txt", index / "ids.txt")

    def open(self, index: Path, options: dict) -> None:
        import lodestore

        self.searcher = lodestore.Searcher(index / "store", memory_budget=options.get("budget", "auto"),
                                           prefetch=options.get("prefetch", False), ndocs=options.get("ndocs"))
        ids = (index / "ids.txt").read_text().splitlines() if (index / "ids.txt").exists() else None
        self._pos = {s: i for i, s in enumerate(ids)} if ids else None

    def _index(self, doc_id: str) -> int:
        return self._pos[doc_id] if self._pos is not None else int(doc_id)

    def search(self, query: np.ndarray, k: int) -> list[int]:
        return [self._index(h[0]) for h in self.searcher.search(query, k=k)]

    def search_batch(self, queries: np.ndarray, k: int) -> list[list[int]]:
        return [[self._index(h[0]) for h in hits] for hits in self.searcher.search(queries, k=k)]

    def stats(self) -> dict:
        st = self.searcher.stats()
        n = max(st["queries"], 1)
        return {"hit_rate": st["hit_rate"], "kb_read_per_q": st["bytes_read"] / n / 1e3,
                "placement": st["placement"]["name"]}

    def reset_stats(self) -> None:
        self.searcher.reset_stats()

    def store_path(self, index: Path) -> Path:
        return index / "store"

    def data_path(self, index: Path) -> Path:
        return index / "store"


class BruteForce(Engine):
    """Exhaustive exact MaxSim over the uncompressed vectors, all in RAM as float32 (numpy BLAS).

    The index is a float16 copy of the unit rows (what a user would keep on disk);
    search loads it as float32 and scores every document, in blocks of whole documents.
    """

    key = "brute"
    BLOCK = 1 << 16  # tokens per matmul block

    def build(self, bundle: Path, index: Path) -> None:
        docs = load_docs(bundle)
        np.save(index / "docs.npy", np.concatenate(docs).astype(np.float16))
        np.save(index / "doclens.npy", np.array([len(d) for d in docs], dtype=np.int64))

    def open(self, index: Path, options: dict) -> None:
        self.docs = np.load(index / "docs.npy").astype(np.float32)
        lens = np.load(index / "doclens.npy")
        offsets = np.concatenate([[0], np.cumsum(lens)])
        self.blocks = []  # (doc_start, doc_stop, token_start, token_stop, local starts)
        a = 0
        while a < len(lens):
            b = max(a + 1, int(np.searchsorted(offsets, offsets[a] + self.BLOCK, side="right")) - 1)
            b = min(b, len(lens))
            self.blocks.append((a, b, offsets[a], offsets[b], offsets[a:b] - offsets[a]))
            a = b
        self.n = len(lens)

    def _scores(self, Q: np.ndarray) -> np.ndarray:
        """Q (nq, ql, d) -> (nq, n_docs) MaxSim scores."""
        nq, ql, d = Q.shape
        flat = Q.reshape(nq * ql, d)
        out = np.empty((nq, self.n), dtype=np.float32)
        for a, b, t0, t1, starts in self.blocks:
            sim = (flat @ self.docs[t0:t1].T).reshape(nq, ql, -1)
            out[:, a:b] = np.maximum.reduceat(sim, starts, axis=2).sum(axis=1)
        return out

    def search(self, query: np.ndarray, k: int) -> list[int]:
        return self.search_batch(query[None], k)[0]

    def search_batch(self, queries: np.ndarray, k: int) -> list[list[int]]:
        Q = np.asarray(queries, dtype=np.float32)
        Q = Q / np.linalg.norm(Q, axis=2, keepdims=True)
        s = self._scores(Q)
        top = np.argpartition(-s, min(k, self.n) - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1).tolist()


class StanfordPlaid(Engine):
    """Stanford PLAID (ColBERTv2's engine) through pylate's StanfordPLAID index, nbits=2.

    Build: k-means centroids + 2-bit residuals + IVF, as pylate calls the Stanford
    indexer. Search options are ColBERT's: ncells, centroid_score_threshold, ndocs
    (pylate's defaults when absent: 8, 0.35, 8192). Its C++ search kernels are
    compiled by torch on first use (cached under ~/.cache/torch_extensions).
    """

    key = "plaid"
    requires = ("pylate", "torch", "sqlitedict")

    def _index(self, index: Path, override: bool, options: dict):
        from pylate.indexes.stanford_plaid import StanfordPLAID

        dim = json.loads((index / "meta.json").read_text())["dim"]
        return StanfordPLAID(index_folder=str(index / "plaid"), index_name="idx", override=override,
                             embedding_size=dim, nbits=2, **options)

    def build(self, bundle: Path, index: Path) -> None:
        (index / "meta.json").write_text(json.dumps({"dim": bundle_dim(bundle)}))
        docs = load_docs(bundle)
        self._index(index, True, {}).add_documents([str(i) for i in range(len(docs))], docs)

    def open(self, index: Path, options: dict) -> None:
        self.idx = self._index(index, False, options)

    def search(self, query: np.ndarray, k: int) -> list[int]:
        return [int(r["id"]) for r in self.idx(np.asarray(query, dtype=np.float32)[None], k=k)[0]]

    def search_batch(self, queries: np.ndarray, k: int) -> list[list[int]]:
        return [[int(r["id"]) for r in res] for res in self.idx(np.asarray(queries, dtype=np.float32), k=k)]


class VoyagerHnsw(Engine):
    """pylate's Voyager index (an HNSW over every token, M=64, ef_construction=ef_search=200)
    searched by pylate's ColBERT retriever: 100 token neighbours per query token, then exact
    MaxSim over the candidates' vectors fetched back from the HNSW."""

    key = "voyager"
    requires = ("pylate", "torch", "voyager", "sqlitedict")

    def _index(self, index: Path, override: bool):
        from pylate.indexes import Voyager

        dim = json.loads((index / "meta.json").read_text())["dim"]
        return Voyager(index_folder=str(index / "voyager"), index_name="idx", override=override, embedding_size=dim)

    def build(self, bundle: Path, index: Path) -> None:
        (index / "meta.json").write_text(json.dumps({"dim": bundle_dim(bundle)}))
        docs = load_docs(bundle)
        self._index(index, True).add_documents([str(i) for i in range(len(docs))], docs)

    def open(self, index: Path, options: dict) -> None:
        from pylate import retrieve

        self.retriever = retrieve.ColBERT(index=self._index(index, False))
        self.k_token = options.get("k_token")

    def search(self, query: np.ndarray, k: int) -> list[int]:
        return self.search_batch(query[None], k)[0]

    def search_batch(self, queries: np.ndarray, k: int) -> list[list[int]]:
        res = self.retriever.retrieve([np.asarray(q, dtype=np.float32) for q in queries], k=k, k_token=self.k_token)
        return [[int(r["id"]) for r in hits] for hits in res]


class LanceMultivector(Engine):
    """LanceDB (embedded, on disk): one row per document, a multivector column (list of
    d-dim float32 vectors) searched with cosine MaxSim. Flat (a scan of every vector)
    or with its IVF_PQ index at default parameters."""

    key = "lance"
    requires = ("lancedb", "pyarrow")

    def __init__(self, indexed: bool):
        self.indexed = indexed
        self.key = "lance_ivfpq" if indexed else "lance_flat"

    def build(self, bundle: Path, index: Path) -> None:
        import lancedb
        import pyarrow as pa

        docs = load_docs(bundle)
        dim = docs[0].shape[1]
        schema = pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.list_(pa.float32(), dim)))])
        db = lancedb.connect(str(index / "lance"))
        table = db.create_table("docs", schema=schema)
        step = 2000
        for s in range(0, len(docs), step):
            part = docs[s : s + step]
            flat = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(part).ravel()), dim)
            offsets = pa.array(np.concatenate([[0], np.cumsum([len(d) for d in part])]).astype(np.int32))
            vectors = pa.ListArray.from_arrays(offsets, flat, type=pa.list_(pa.list_(pa.float32(), dim)))
            table.add(pa.Table.from_arrays([pa.array(np.arange(s, s + len(part), dtype=np.int64)), vectors],
                                           schema=schema))
        if self.indexed:
            table.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_PQ")

    def open(self, index: Path, options: dict) -> None:
        import lancedb

        self.table = lancedb.connect(str(index / "lance")).open_table("docs")

    def search(self, query: np.ndarray, k: int) -> list[int]:
        q = [np.asarray(v, dtype=np.float32) for v in query]
        res = self.table.search(q, vector_column_name="vector").distance_type("cosine").limit(k).select(["id"]).to_arrow()
        return res.column("id").to_pylist()


class FastPlaid(Engine):
    """fast-plaid (LightOn's Rust PLAID). Its wheels are built against one torch release
    (2.11 for the current ones) and crash against others, so it runs only where a
    matching torch is installed; otherwise the row says "not run"."""

    key = "fast_plaid"
    requires = ("fast_plaid", "torch")

    def missing(self) -> str | None:
        absent = _missing_modules(*self.requires)
        if absent:
            import importlib.metadata as md

            try:
                torch_version = md.version("torch")
            except md.PackageNotFoundError:
                torch_version = "none"
            return f"not run: fast-plaid not installed (its wheels need torch 2.11 exactly; torch here: {torch_version})"
        return None

    def build(self, bundle: Path, index: Path) -> None:
        import torch
        from fast_plaid import search as fp

        docs = load_docs(bundle)
        fp.FastPlaid(index=str(index / "fast_plaid"), device="cpu").create(
            documents_embeddings=[torch.from_numpy(d) for d in docs], nbits=2)

    def open(self, index: Path, options: dict) -> None:
        from fast_plaid import search as fp

        self.idx = fp.FastPlaid(index=str(index / "fast_plaid"), device="cpu")

    def search(self, query: np.ndarray, k: int) -> list[int]:
        import torch

        res = self.idx.search(queries_embeddings=torch.from_numpy(np.asarray(query, dtype=np.float32))[None], top_k=k)
        return [int(i) for i, _ in res[0]]


ENGINES = {
    "lodestore": Lodestore,
    "brute": BruteForce,
    "plaid": StanfordPlaid,
    "voyager": VoyagerHnsw,
    "lance_flat": lambda: LanceMultivector(indexed=False),
    "lance_ivfpq": lambda: LanceMultivector(indexed=True),
    "fast_plaid": FastPlaid,
}


def make(key: str) -> Engine:
    return ENGINES[key]()


def dir_bytes(path: Path) -> int:
    """Bytes on disk of every regular file under path (symlinks not followed)."""
    total = 0
    for dirpath, _d, files in os.walk(path):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def clear(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
