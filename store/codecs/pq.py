"""The residual product-quantization codec ("pq"): centroid id + one byte per residual subspace.

A token vector x (unit norm, `dim` floats) is stored as
  * `code`: its nearest centroid, exactly as the scalar codec (store/codecs/scalar.py)
    finds it (same float16 centroids, same training: store/codecs/_centroids.py, _kmeans.py), and
  * `residual`: r = x - centroid split into m equal subspaces of dim/m
    dimensions; byte s of the row is the nearest of 256 codewords of subspace s
    (FORMAT.md section 7.5).
Decoding is centroid + concat_s(codebooks[s, byte_s]), re-normalized.

Why: at the same bytes per token, product quantization reconstructs residuals
better than per-dimension scalar buckets (docs/BENCHMARKS.md, codec section).
The row stays a fixed m bytes per token, so segments copy rows without
knowing the codec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .._errors import CorruptStoreError
from .._manifest import PQ_NARROW_SUBSPACES, PQ_READER_FEATURE, PQ_WIDE_SUBSPACES, CodecEntry
from .._smallarray import read_attributes, read_small
from ._centroids import ENCODE_BATCH, CentroidCodec, as_centroids, write_group
from ._kmeans import train_centroids

PQ_SUBSPACES_ALLOWED = PQ_NARROW_SUBSPACES + PQ_WIDE_SUBSPACES  # 96 and 128 need reader feature codec-pq-wide
PQ_BITS = 8  # 256 codewords per subspace: one byte per subspace
PQ_CODES = 1 << PQ_BITS
# Residual vectors the codebooks are trained on: faiss's k-means uses at most 256
# points per codeword (max_points_per_centroid), i.e. 2^16 for 256 codewords.
PQ_TRAINING_SAMPLE = 1 << 16
FAISS_FAST_DSUB = (2, 4, 8)  # subspace widths faiss's compute_codes has SIMD code for (faster there than BLAS)
BLAS_ENCODE_ROWS = 8192  # tokens per distance block of the matmul encoder
PQ_ITERATIONS = 20  # fewer iterations lose token cosine, more barely add any (1e6-token residuals)
ARRAYS = ("centroids", "pq_codebooks")


def check_pq_params(dim: int, subspaces: int) -> None:
    """Raise a clear ValueError for a dim / subspace count the pq codec cannot store."""
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim <= 0:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if subspaces not in PQ_SUBSPACES_ALLOWED:
        raise ValueError(f"pq_subspaces must be one of {PQ_SUBSPACES_ALLOWED}, got {subspaces!r}")
    if dim % subspaces:
        raise ValueError(f"dim must be divisible by pq_subspaces, got dim {dim} and pq_subspaces {subspaces}")


@dataclass(frozen=True, eq=False)
class PQCodec(CentroidCodec):
    """Trained pq codec state: what FORMAT.md section 7.5 stores under `codec/`.

    centroids: (K, dim), unit norm, float16 values held as float32 (as the scalar codec).
    codebooks: (m, 256, dim/m) float32: codeword c of subspace s is codebooks[s, c],
    covering residual dimensions [s*dim/m, (s+1)*dim/m).
    avg_residual: mean |residual| per dimension over the codebook training sample.
    """

    name: ClassVar[str] = "pq"
    manifest_kind: ClassVar[str] = "pq"
    arrays: ClassVar[tuple[str, ...]] = ARRAYS
    size_setting: ClassVar[str] = "pq_subspaces"
    reader_features: ClassVar[tuple[str, ...]] = (PQ_READER_FEATURE,)  # and codec-pq-wide for 96, 128 subspaces
    # Residual vectors the codebooks train on: a second draw (store/_training.py)
    residual_sample_size: ClassVar[int] = PQ_TRAINING_SAMPLE

    centroids: np.ndarray
    codebooks: np.ndarray
    avg_residual: float = 0.0
    _flat: np.ndarray = field(init=False, repr=False)  # (m*256, dsub): row s*256 + c = codebooks[s, c]
    _base: np.ndarray = field(init=False, repr=False)  # (m,) uint16: s*256, added to a row's bytes to index _flat

    def __post_init__(self) -> None:
        cb = np.ascontiguousarray(np.asarray(self.codebooks, dtype=np.float32))
        if cb.ndim != 3 or cb.shape[1] != PQ_CODES:
            raise ValueError(f"codebooks must be (subspaces, {PQ_CODES}, dim/subspaces), got shape {cb.shape}")
        object.__setattr__(self, "centroids", as_centroids(self.centroids))
        check_pq_params(self.dim, cb.shape[0])
        if cb.shape[0] * cb.shape[2] != self.dim:
            raise ValueError(f"codebooks of shape {cb.shape} do not cover dim {self.dim}")
        object.__setattr__(self, "codebooks", cb)
        object.__setattr__(self, "_flat", cb.reshape(-1, cb.shape[2]))
        object.__setattr__(self, "_base", (np.arange(cb.shape[0]) * PQ_CODES).astype(np.uint16))  # m*256 <= 32768

    @property
    def subspaces(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def residual_bytes(self) -> int:
        """m: one byte per subspace, a fixed row size whatever the data."""
        return self.subspaces

    @property
    def manifest_nbits(self) -> int:
        """0: a pq store has no per-dimension bits (FORMAT.md section 7.5)."""
        return 0

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        sample: np.ndarray,
        subspaces: int,
        *,
        num_centroids: int | None = None,
        n_tokens: int | None = None,
        seed: int = 0,
        residual_sample: np.ndarray | None = None,
    ) -> "PQCodec":
        """Train centroids (exactly as the scalar codec does, on `sample`) and the m codebooks.

        The codebooks are trained on the residuals of `residual_sample` (default:
        `sample`), at most PQ_TRAINING_SAMPLE of them: a draw separate from the
        k-means sample keeps the residuals representative (k-means' own
        training points sit closer to their centroids than new tokens do).
        All m subspaces are trained by one faiss ProductQuantizer call.
        """
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        check_pq_params(sample.shape[1], subspaces)
        centroids, _ = train_centroids(sample, num_centroids=num_centroids, n_tokens=n_tokens, seed=seed)
        return cls.train_codebooks(centroids, sample if residual_sample is None else residual_sample,
                                   subspaces, seed=seed)

    @classmethod
    def train_codebooks(cls, centroids: np.ndarray, residual_sample: np.ndarray, subspaces: int, *,
                        seed: int = 0) -> "PQCodec":
        """The codec for given (K, dim) centroids: codebooks trained on the residuals of `residual_sample`."""
        import faiss  # local import: only a build needs it

        centroids = np.asarray(centroids).astype(np.float16)
        dim = centroids.shape[1]
        check_pq_params(dim, subspaces)
        rs = np.ascontiguousarray(residual_sample, dtype=np.float32)
        if len(rs) > PQ_TRAINING_SAMPLE:
            rs = rs[np.sort(np.random.default_rng(seed).choice(len(rs), PQ_TRAINING_SAMPLE, replace=False))]
        proto = cls(centroids, np.zeros((subspaces, PQ_CODES, dim // subspaces), np.float32))
        residuals = np.ascontiguousarray(rs - proto.centroids[proto.assign(rs)])
        pq = faiss.ProductQuantizer(dim, subspaces, PQ_BITS)
        pq.cp.seed = seed
        pq.cp.niter = PQ_ITERATIONS
        pq.cp.min_points_per_centroid = 1  # tiny corpora: fewer points than codewords is expected, not an error
        pq.verbose = False
        train = residuals
        if len(train) < PQ_CODES:  # k-means needs at least as many points as codewords: repeat them
            train = np.ascontiguousarray(np.resize(train, (PQ_CODES, dim)))
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # one thread trains faster than two on a shared 2-core box
        try:
            pq.train(train)
        finally:
            faiss.omp_set_num_threads(threads)
        codebooks = faiss.vector_to_array(pq.centroids).reshape(subspaces, PQ_CODES, dim // subspaces)
        codec = cls(centroids, codebooks, float(np.abs(residuals).mean()))
        object.__setattr__(codec, "_assign_fn", proto._assigner())  # same centroids: reuse the nearest-centroid search
        return codec

    # ------------------------------------------------------------------ encode / decode
    def _quantizer(self):
        """faiss ProductQuantizer holding our codebooks (exact nearest codeword per subspace)."""
        pq = getattr(self, "_faiss_pq", None)
        if pq is None:
            import faiss

            pq = faiss.ProductQuantizer(self.dim, self.subspaces, PQ_BITS)
            faiss.copy_array_to_vector(self.codebooks.ravel(), pq.centroids)
            object.__setattr__(self, "_faiss_pq", pq)
        return pq

    def encode_residuals(self, residuals: np.ndarray) -> np.ndarray:
        """(n, dim) float32 residuals -> (n, m) uint8: byte s = nearest codeword (L2) of subspace s.

        faiss's compute_codes has SIMD code for subspaces of 2, 4 or 8 dimensions; for
        others (the 384-d encoder's 6, 12, 24) one matmul per subspace is several times
        faster (measured at d=384, m=64); the same codes but for float-rounding near-ties.
        """
        if self.dim // self.subspaces not in FAISS_FAST_DSUB:
            return self._encode_residuals_blas(residuals)
        pq = self._quantizer()
        out = np.empty((len(residuals), self.subspaces), dtype=np.uint8)
        for s in range(0, len(residuals), ENCODE_BATCH):
            out[s : s + ENCODE_BATCH] = pq.compute_codes(np.ascontiguousarray(residuals[s : s + ENCODE_BATCH], dtype=np.float32))
        return out

    def _cb_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """(codebooks transposed (m, dsub, 256), their squared norms (m, 256)) float32, made once."""
        cb_t = getattr(self, "_cb_t", None)
        if cb_t is None:
            cb_t = np.ascontiguousarray(self.codebooks.transpose(0, 2, 1), dtype=np.float32)
            object.__setattr__(self, "_cb_t", cb_t)
            object.__setattr__(self, "_cb_sq", np.ascontiguousarray(
                np.einsum("scj,scj->sc", self.codebooks, self.codebooks), dtype=np.float32))
        return cb_t, self._cb_sq

    def _encode_residuals_blas(self, residuals: np.ndarray) -> np.ndarray:
        """Nearest codeword per subspace as argmin over codewords of |c|^2 - 2 <r_s, c> (ties: lower index,
        as faiss), BLAS_ENCODE_ROWS tokens at a time (an 8 MB distance block)."""
        m, dsub = self.subspaces, self.dim // self.subspaces
        cb_t, sq = self._cb_tables()
        out = np.empty((len(residuals), m), dtype=np.uint8)
        for a in range(0, len(residuals), BLAS_ENCODE_ROWS):
            part = np.ascontiguousarray(residuals[a : a + BLAS_ENCODE_ROWS], dtype=np.float32).reshape(-1, m, dsub)
            for s in range(m):
                dist = part[:, s, :] @ cb_t[s]
                dist *= -2
                dist += sq[s]
                out[a : a + len(part), s] = dist.argmin(axis=1)
        return out

    def decode_residuals(self, rows: np.ndarray) -> np.ndarray:
        """(n, m) uint8 -> (n, dim) float32: one gather from the codebooks for all subspaces.

        uint16 indices (uint8 row + uint16 base) rather than intp: faster, and a quarter of the memory.
        """
        idx = rows + self._base
        return np.take(self._flat, idx, axis=0).reshape(len(rows), self.dim)

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encode (n, dim) unit vectors -> (codes (n,) uint16, residual rows (n, m) uint8).

        In batches of ENCODE_BATCH tokens, so the float32 residuals never exceed one batch.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) vectors, got shape {x.shape}")
        codes = self.assign(x)
        rows = np.empty((len(x), self.subspaces), dtype=np.uint8)
        for s in range(0, len(x), ENCODE_BATCH):
            part = x[s : s + ENCODE_BATCH] - self.centroids[codes[s : s + ENCODE_BATCH]]
            rows[s : s + ENCODE_BATCH] = self.encode_residuals(part)
        return codes, rows

    def byte_tables(self) -> np.ndarray:
        """(m, 256, dim/m): byte j of a row adds codeword codebooks[j, byte] to its subspace's
        dimensions (the scalar codec's method of the same name, for residual interaction)."""
        return self.codebooks

    def _native_table(self) -> tuple[np.ndarray, int, int]:
        w = self.codebooks.shape[2]
        return self._flat, PQ_CODES * w, w  # byte position s reads codebook s

    # ------------------------------------------------------------------ on disk (FORMAT.md section 7.5)
    def manifest_entry(self, path: str) -> CodecEntry:
        return CodecEntry(self.manifest_kind, path, self.dim, self.manifest_nbits, self.num_centroids,
                          pq_subspaces=self.subspaces)

    def save(self, path: Path) -> None:
        write_group(path, {"kind": self.manifest_kind, "pq_subspaces": self.subspaces, "pq_bits": PQ_BITS,
                           "avg_residual": self.avg_residual},
                    {"centroids": self.centroids_f16, "pq_codebooks": self.codebooks.astype("<f4")})

    @classmethod
    def load(cls, path: Path, entry: CodecEntry, *, nbits: int, dim: int) -> "PQCodec":
        """The codec saved at `path`, checked against the manifest entry's subspaces and the store's dim."""
        subspaces = entry.pq_subspaces
        if subspaces is None:
            raise CorruptStoreError(f"{path}: the manifest's pq codec entry has no pq_subspaces")
        attrs = read_attributes(path)
        if attrs.get("kind") != "pq" or attrs.get("pq_subspaces") != subspaces or attrs.get("pq_bits") != PQ_BITS:
            raise CorruptStoreError(f"{path}: codec attributes {attrs} disagree with the manifest (pq, {subspaces} subspaces)")
        centroids = read_small(path / "centroids")
        codebooks = read_small(path / "pq_codebooks")
        if codebooks.shape != (subspaces, 1 << PQ_BITS, dim // subspaces) or centroids.ndim != 2 or centroids.shape[1] != dim:
            raise CorruptStoreError(f"{path}: codec arrays have shapes {centroids.shape}, {codebooks.shape}; "
                                    f"expected (K, {dim}) and ({subspaces}, {1 << PQ_BITS}, {dim // subspaces})")
        return cls(centroids.astype(np.float16), codebooks.astype(np.float32), float(attrs.get("avg_residual", 0.0)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PQCodec):
            return NotImplemented
        return np.array_equal(self.centroids, other.centroids) and np.array_equal(self.codebooks, other.codebooks)

    __hash__ = None  # type: ignore[assignment]
