"""Where documents come from: validated in-memory lists, embedding bundles, .npy directories.

Every source yields batches of (ids, doclens, tokens) with tokens float32 and
every row L2-normalized, and can hand k-means a bounded random sample of token
rows. Bad input raises ValueError naming the document and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ._payloads import check_payloads

BATCH_BYTES = 64 << 20  # float32 tokens encoded per batch: bounds encode memory at any dim
BATCH_TOKENS: int | None = None  # fixed tokens per batch (tests); None: from BATCH_BYTES


def batch_tokens(dim: int) -> int:
    """Tokens per encode batch: 2^17 at d=128, fewer for wider vectors."""
    return BATCH_TOKENS or max(1024, BATCH_BYTES // (4 * dim))


def as_numpy(x: Any) -> np.ndarray:
    """numpy array from numpy or torch input (duck-typed, so importing store never imports torch)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor on any device, any float dtype
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def normalize_document(doc_id: str, x: Any, dim: int) -> np.ndarray:
    """Check one document's token matrix and return it as unit-norm float32 rows."""
    a = as_numpy(x)
    if a.ndim != 2:
        raise ValueError(f"document {doc_id!r}: expected a (n_tokens, {dim}) matrix, got shape {a.shape}")
    if a.shape[1] != dim:
        raise ValueError(f"document {doc_id!r}: wrong dim {a.shape[1]}, the store has dim {dim}")
    if a.shape[0] == 0:
        raise ValueError(f"document {doc_id!r}: empty document (no token vectors)")
    return normalize_rows(a, f"document {doc_id!r}", lambda what, row: f"document {doc_id!r}: token {row} is {what}")


def normalize_rows(a: Any, name: str = "rows", describe: Callable[[str, int], str] | None = None,
                   zero_rows: str = "error") -> np.ndarray:
    """(n, d) float vectors as unit-norm float32 rows: the one normalization of documents and queries.

    Values are checked for finiteness in the input's own dtype, and each row is divided by its largest
    |value| before it is cast or squared: a float32 sum of squares overflows past ~1.8e19 (the row would
    become zeros) and underflows below ~1e-19 (a valid row would look like a zero vector), and a finite
    float64 of 1e300 would become inf in a cast first. Then float32, each row divided by its norm.
    name: what the array is, for errors about all of it; describe(problem, row) -> the message for a
    bad row (default: "{name}: row {row} is {problem}"). zero_rows: "error" (a zero row is a ValueError,
    as for documents) or "keep" (left zero, as for queries, whose zero rows add nothing to MaxSim).
    """
    a = as_numpy(a)
    describe = describe or (lambda what, row: f"{name}: row {row} is {what}")
    if a.ndim != 2:
        raise ValueError(f"{name}: expected an (n, dim) matrix, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected float16/32/64 values, got {a.dtype}")
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        raise ValueError(describe("not finite (NaN or inf)", int(np.argmax(bad))))
    peak = np.abs(a).max(axis=1, keepdims=True) if a.shape[1] else np.zeros((len(a), 1), a.dtype)
    zero = peak[:, 0] == 0
    if zero_rows == "error" and zero.any():
        raise ValueError(describe("a zero vector", int(np.argmax(zero))))
    peak[zero] = 1
    if a.dtype.itemsize > 4:  # scaled in the input's precision, so the cast cannot overflow
        x = (a / peak).astype(np.float32)
    else:  # float16/32: exact in float32, scaled there (after it every row's norm is in [1, sqrt(dim)])
        x = a.astype(np.float32)
        x /= peak.astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.where(norms > 0, norms, 1) if zero.any() else norms
    return x


def check_ids(ids: Sequence[Any], n_docs: int, existing: set[str] | None = None) -> list[str]:
    """Ids must be non-empty, unique strings, one per document, and not already live in the store."""
    if isinstance(ids, str):
        raise ValueError("ids must be a list of strings, not one string")
    ids = list(ids)
    if len(ids) != n_docs:
        raise ValueError(f"got {len(ids)} ids for {n_docs} documents")
    seen: set[str] = set()
    for i in ids:
        if not isinstance(i, str):
            raise ValueError(f"document id {i!r} is not a string")
        if not i:
            raise ValueError("empty document id")
        if i in seen:
            raise ValueError(f"duplicate document id {i!r}")
        if existing is not None and i in existing:
            raise ValueError(f"document id {i!r} is already in the store (pass upsert=True to replace it)")
        seen.add(i)
    return ids


class DocSource:
    """A stream of documents of known size: what a segment build consumes."""

    n_docs: int
    n_tokens: int
    dim: int
    #: One bytes object per document (stored beside its tokens, FORMAT.md 8.5), or None.
    payloads: list[bytes] | None = None
    #: Typed metadata of every document (store/_metadata.py) and the store's field types with it, or None.
    metadata: Any = None
    metadata_schema: dict[str, str] | None = None
    #: Keyword postings of every document (store/_keywords.py Keywords), or None.
    keywords: Any = None

    def ids(self) -> list[str]:
        raise NotImplementedError

    def batches(self) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        """Yield (ids, doclens int64, tokens float32 unit rows) in document order."""
        raise NotImplementedError

    def sample(self, n: int, seed: int) -> np.ndarray:
        """n random token rows (fewer if the source has fewer), unit norm float32."""
        raise NotImplementedError


class InMemorySource(DocSource):
    """Documents handed to Store.add: validated and normalized up front, before anything is written."""

    def __init__(self, ids: Sequence[Any], embeddings: Sequence[Any], dim: int, existing: set[str] | None,
                 payloads: Sequence[Any] | None = None):
        if isinstance(embeddings, np.ndarray) and embeddings.ndim == 2:
            raise ValueError("embeddings must be a list with one (n_tokens, dim) matrix per document")
        embeddings = list(embeddings)
        if len(embeddings) == 0:
            raise ValueError("nothing to add: no documents")
        self._ids = check_ids(ids, len(embeddings), existing)
        self.payloads = check_payloads(payloads, len(embeddings))
        self.docs = [normalize_document(i, e, dim) for i, e in zip(self._ids, embeddings)]
        self.dim = dim
        self.n_docs = len(self.docs)
        self.n_tokens = sum(len(d) for d in self.docs)

    def ids(self) -> list[str]:
        return self._ids

    def batches(self):
        start = 0
        while start < self.n_docs:
            stop, tokens = start, 0
            while stop < self.n_docs and (tokens == 0 or tokens + len(self.docs[stop]) <= batch_tokens(self.dim)):
                tokens += len(self.docs[stop])
                stop += 1
            part = self.docs[start:stop]
            yield self._ids[start:stop], np.array([len(d) for d in part], np.int64), np.concatenate(part)
            start = stop

    def sample(self, n: int, seed: int) -> np.ndarray:
        rows = np.random.default_rng(seed).choice(self.n_tokens, size=min(n, self.n_tokens), replace=False)
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in self.docs])])
        doc = np.searchsorted(offsets, rows, side="right") - 1
        return np.stack([self.docs[d][r - offsets[d]] for d, r in zip(doc, rows)]) if len(rows) else np.zeros((0, self.dim), np.float32)


class BundleSource(DocSource):
    """An embedding bundle directory: docs.npy (tokens x dim), doclens.npy, optional ids.txt.

    docs.npy is read one batch at a time with pread (not through a memory map:
    mapped pages of a multi-GB file would count in the build's RSS), so memory
    stays bounded by one batch.
    """

    def __init__(self, path: str | Path, dim: int | None = None, existing: set[str] | None = None,
                 ids: Sequence[Any] | None = None):
        self.path = Path(path)
        for name in ("docs.npy", "doclens.npy"):
            if not (self.path / name).exists():
                raise ValueError(f"{self.path}: not an embedding bundle (no {name})")
        header = np.load(self.path / "docs.npy", mmap_mode="r")
        shape, self._dtype, self._offset = header.shape, header.dtype, header.offset
        fortran = header.flags.f_contiguous and not header.flags.c_contiguous
        del header
        self.doclens = np.load(self.path / "doclens.npy").astype(np.int64)
        if self.doclens.ndim != 1 or len(self.doclens) == 0:
            raise ValueError(f"{self.path}: nothing to add: doclens.npy holds no documents (shape {self.doclens.shape})")
        if len(shape) != 2 or fortran:
            raise ValueError(f"{self.path}/docs.npy: expected a C-order (tokens, dim) array, got shape {shape}")
        if not np.issubdtype(self._dtype, np.floating):
            raise ValueError(f"{self.path}/docs.npy: expected float16/32/64 values, got {self._dtype}")
        self.dim = int(shape[1])
        self._row_bytes = self.dim * self._dtype.itemsize
        n_rows = int(shape[0])
        if dim is not None and dim != self.dim:
            raise ValueError(f"{self.path}: bundle has dim {self.dim}, the store has dim {dim}")
        if (self.doclens <= 0).any():
            bad = int(np.argmax(self.doclens <= 0))
            raise ValueError(f"{self.path}: document {bad} has {self.doclens[bad]} tokens (empty document)")
        if int(self.doclens.sum()) != n_rows:
            raise ValueError(f"{self.path}: doclens sum to {int(self.doclens.sum())} but docs.npy has {n_rows} rows")
        self.n_docs, self.n_tokens = len(self.doclens), n_rows
        ids_file = self.path / "ids.txt"
        if ids is None:  # ids given by the caller win over ids.txt (they may hold any character)
            ids = ids_file.read_text(encoding="utf-8").splitlines() if ids_file.exists() else [str(i) for i in range(self.n_docs)]
        self._ids = check_ids(ids, self.n_docs, existing)
        self.offsets = np.concatenate([[0], np.cumsum(self.doclens)])

    def ids(self) -> list[str]:
        return self._ids

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of docs.npy in the file's dtype (read-only), read with one pread."""
        with open(self.path / "docs.npy", "rb") as f:
            data = os.pread(f.fileno(), (hi - lo) * self._row_bytes, self._offset + lo * self._row_bytes)
        if len(data) != (hi - lo) * self._row_bytes:
            raise ValueError(f"{self.path}/docs.npy: file shorter than its header says")
        return np.frombuffer(data, dtype=self._dtype).reshape(hi - lo, self.dim)

    def batches(self):
        start = 0
        while start < self.n_docs:
            stop = max(start + 1, int(np.searchsorted(self.offsets, self.offsets[start] + batch_tokens(self.dim), side="right")) - 1)
            stop = min(stop, self.n_docs)
            lo, hi = int(self.offsets[start]), int(self.offsets[stop])
            tokens = self._rows(lo, hi)
            doclens = self.doclens[start:stop]
            ids = self._ids[start:stop]
            doc_of_row = np.repeat(np.arange(stop - start), doclens)
            yield ids, doclens, normalize_rows(tokens, "bundle", lambda what, row: f"document {ids[doc_of_row[row]]!r}: token {row - int(self.offsets[start + doc_of_row[row]] - lo)} is {what}")
            start = stop

    def sample(self, n: int, seed: int) -> np.ndarray:
        rows = np.sort(np.random.default_rng(seed).choice(self.n_tokens, size=min(n, self.n_tokens), replace=False))
        parts = []  # one pass over the file in blocks, keeping the sampled rows of each
        step = batch_tokens(self.dim)
        for lo in range(0, self.n_tokens, step):
            hi = min(lo + step, self.n_tokens)
            a, b = np.searchsorted(rows, [lo, hi])
            if b > a:
                parts.append(self._rows(lo, hi)[rows[a:b] - lo])
        x = np.concatenate(parts) if parts else np.zeros((0, self.dim), self._dtype)

        def describe(what: str, i: int) -> str:  # name it here: k-means would fail on it with a bare faiss error
            doc = int(np.searchsorted(self.offsets, int(rows[i]), side="right")) - 1
            return f"document {self._ids[doc]!r}: token {int(rows[i]) - int(self.offsets[doc])} is {what}"

        return normalize_rows(x, "bundle sample", describe, zero_rows="keep")


class NpyDirSource(DocSource):
    """A directory of .npy files, one document each, id = file stem (sorted by name).

    Shapes are read from the headers up front; files are loaded one batch at a
    time, so memory stays bounded by one batch.
    """

    def __init__(self, path: str | Path, dim: int, existing: set[str] | None = None):
        self.files = sorted(Path(path).glob("*.npy"))
        if not self.files:
            raise ValueError(f"{path}: no .npy files")
        self._ids = check_ids([f.stem for f in self.files], len(self.files), existing)
        lens = []
        for doc_id, f in zip(self._ids, self.files):
            shape = np.load(f, mmap_mode="r").shape
            if len(shape) != 2 or shape[1] != dim or shape[0] == 0:
                raise ValueError(f"document {doc_id!r}: expected a non-empty (n_tokens, {dim}) matrix in {f.name}, got shape {shape}")
            lens.append(shape[0])
        self.doclens = np.array(lens, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.doclens)])
        self.dim, self.n_docs, self.n_tokens = dim, len(self.files), int(self.doclens.sum())

    def ids(self) -> list[str]:
        return self._ids

    def _doc(self, i: int) -> np.ndarray:
        return normalize_document(self._ids[i], np.load(self.files[i]), self.dim)

    def batches(self):
        start = 0
        while start < self.n_docs:
            stop = max(start + 1, int(np.searchsorted(self.offsets, self.offsets[start] + batch_tokens(self.dim), side="right")) - 1)
            stop = min(stop, self.n_docs)
            yield self._ids[start:stop], self.doclens[start:stop], np.concatenate([self._doc(i) for i in range(start, stop)])
            start = stop

    def sample(self, n: int, seed: int) -> np.ndarray:
        rows = np.sort(np.random.default_rng(seed).choice(self.n_tokens, size=min(n, self.n_tokens), replace=False))
        doc = np.searchsorted(self.offsets, rows, side="right") - 1
        parts = [self._doc(d)[rows[doc == d] - self.offsets[d]] for d in np.unique(doc).tolist()]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


def open_source(path: str | Path, dim: int | None, existing: set[str] | None = None,
                ids: Sequence[Any] | None = None) -> DocSource:
    """A bundle if the directory has docs.npy, else a directory of per-document .npy files.

    ids: the bundle's document ids, instead of its ids.txt (bundles only).
    """
    path = Path(path)
    if (path / "docs.npy").exists():
        return BundleSource(path, dim, existing, ids)
    if ids is not None:
        raise ValueError(f"{path}: ids can be given only for an embedding bundle (docs.npy)")
    if dim is None:
        first = next(iter(sorted(path.glob("*.npy"))), None)
        if first is None:
            raise ValueError(f"{path}: neither an embedding bundle (docs.npy) nor a directory of .npy files")
        dim = int(np.load(first, mmap_mode="r").shape[-1])
    return NpyDirSource(path, dim, existing)
