"""The scalar codec ("scalar"; codec.kind "residual" on disk): centroid id + n-bit residual per dimension.

ColBERTv2's codec. A token vector x (unit norm, `dim` floats) is stored as
  * `code`: the id of its nearest centroid (inner product, centroids unit norm,
    held as float16), and
  * `residual`: x - centroid, each dimension quantized to `nbits` bits with
    bucket cutoffs learned from the residual distribution, packed MSB first
    (FORMAT.md section 9).
Decoding is centroid + bucket_weights[bucket], re-normalized.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .._errors import CorruptStoreError
from .._manifest import CodecEntry
from .._smallarray import read_attributes, read_small
from ._centroids import CentroidCodec, as_centroids, write_group
from ._kmeans import KMEANS_ITERATIONS, train_centroids

NBITS_ALLOWED = (1, 2, 4)
ARRAYS = ("centroids", "bucket_cutoffs", "bucket_weights")


def check_params(dim: int, nbits: int) -> None:
    """Raise a clear ValueError for a dim/nbits pair the codec cannot store."""
    if nbits not in NBITS_ALLOWED:
        raise ValueError(f"nbits must be one of {NBITS_ALLOWED}, got {nbits}")
    if not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if (dim * nbits) % 8:
        raise ValueError(f"dim * nbits must be a multiple of 8 (whole bytes per token), got {dim} * {nbits}")


# --------------------------------------------------------------------------- bit packing


def pack_bits(values: np.ndarray, nbits: int) -> np.ndarray:
    """Pack (n, dim) bucket indices (< 2^nbits) into (n, dim*nbits/8) uint8, MSB first.

    Dimension j of a row lands in byte j // (8/nbits), at bit offset
    8 - nbits*(j % (8/nbits) + 1) from the least significant bit: dimension 0
    takes the most significant bits of byte 0.
    """
    n, dim = values.shape
    per = 8 // nbits
    v = values.astype(np.uint8, copy=False).reshape(n, dim // per, per)
    out = np.zeros((n, dim // per), dtype=np.uint8)
    for k in range(per):
        out |= v[:, :, k] << np.uint8(8 - nbits * (k + 1))
    return out


def unpack_bits(packed: np.ndarray, nbits: int, dim: int) -> np.ndarray:
    """Inverse of pack_bits: (n, dim*nbits/8) uint8 -> (n, dim) uint8 bucket indices."""
    return np.take(_index_lut(nbits), packed, axis=0).reshape(packed.shape[0], dim)


def _index_lut(nbits: int) -> np.ndarray:
    """(256, 8/nbits) table: byte value -> the bucket indices it holds, in dimension order."""
    per = 8 // nbits
    mask = (1 << nbits) - 1
    b = np.arange(256, dtype=np.uint16)[:, None]
    shifts = np.array([8 - nbits * (k + 1) for k in range(per)], dtype=np.uint16)[None, :]
    return ((b >> shifts) & mask).astype(np.uint8)


# --------------------------------------------------------------------------- codec


@dataclass(frozen=True, eq=False)
class ScalarCodec(CentroidCodec):
    """Trained scalar codec state: what FORMAT.md section 7 stores under `codec/`.

    centroids: (K, dim), unit norm, float16 values (held as float32 in memory: BLAS
    and decoding need float32, and one copy is half the RAM of two). bucket_cutoffs: (2^nbits - 1,) float32,
    ascending. bucket_weights: (2^nbits,) float32, the value each bucket decodes to.
    avg_residual: mean |residual| per dimension over the held-out sample (float32 scalar).
    """

    name: ClassVar[str] = "scalar"
    manifest_kind: ClassVar[str] = "residual"  # format v1's name for this codec: kept on disk
    arrays: ClassVar[tuple[str, ...]] = ARRAYS
    size_setting: ClassVar[str] = "nbits"
    reader_features: ClassVar[tuple[str, ...]] = ()
    residual_sample_size: ClassVar[int] = 0  # trains on the held-out part of the k-means sample only

    centroids: np.ndarray
    bucket_cutoffs: np.ndarray
    bucket_weights: np.ndarray
    nbits: int
    avg_residual: float = 0.0
    _weight_lut: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_params(self.dim, self.nbits)
        if self.bucket_cutoffs.shape != ((1 << self.nbits) - 1,) or self.bucket_weights.shape != (1 << self.nbits,):
            raise ValueError("bucket_cutoffs / bucket_weights do not match nbits")
        object.__setattr__(self, "centroids", as_centroids(self.centroids))
        lut = self.bucket_weights.astype(np.float32)[_index_lut(self.nbits)]  # (256, per)
        object.__setattr__(self, "_weight_lut", np.ascontiguousarray(lut))

    @property
    def residual_bytes(self) -> int:
        return self.dim * self.nbits // 8

    @property
    def manifest_nbits(self) -> int:
        return self.nbits

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, sample: np.ndarray, nbits: int, *, num_centroids: int | None = None, n_tokens: int | None = None,
              seed: int = 0, iterations: int = KMEANS_ITERATIONS,
              residual_sample: np.ndarray | None = None) -> "ScalarCodec":
        """Train centroids (store/codecs/_kmeans.py) and residual buckets on `sample`.

        `sample` is (n, dim) float32 of unit vectors; `n_tokens` (the corpus size) sets the
        default K. The held-out 5% of the sample k-means did not train on sets the bucket
        cutoffs and weights (`residual_sample` is not used: the protocol's second draw is pq's).
        """
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        check_params(sample.shape[1], nbits)
        centroids, heldout = train_centroids(sample, num_centroids=num_centroids, n_tokens=n_tokens, seed=seed,
                                             iterations=iterations)
        proto = cls(centroids, np.zeros((1 << nbits) - 1, np.float32), np.zeros(1 << nbits, np.float32), nbits)
        codes = proto.assign(heldout)
        residuals = heldout - proto.centroids[codes]
        flat = residuals.ravel()
        levels = 1 << nbits
        cutoffs = np.quantile(flat, np.arange(1, levels) / levels).astype(np.float32)
        weights = np.quantile(flat, (np.arange(levels) + 0.5) / levels).astype(np.float32)
        return cls(centroids, cutoffs, weights, nbits, float(np.abs(residuals).mean()))

    # ------------------------------------------------------------------ encode / decode
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encode (n, dim) unit vectors -> (codes (n,), packed residuals (n, residual_bytes) uint8)."""
        x = self._check_vectors(x)
        codes = self.assign(x)
        residuals = x - self.centroids[codes]
        buckets = np.searchsorted(self.bucket_cutoffs, residuals, side="right").astype(np.uint8)
        return codes, pack_bits(buckets, self.nbits)

    def byte_tables(self) -> np.ndarray:
        """(residual_bytes, 256, 8/nbits): what byte j of a residual row adds to dimensions
        [j*w, (j+1)*w) for each byte value (every byte uses the same bucket weights): the
        residual as a sum of per-byte lookups, which residual interaction scores from."""
        m, w = self.residual_bytes, self._weight_lut.shape[1]
        return np.broadcast_to(self._weight_lut, (m, 256, w))

    def decode_residuals(self, packed: np.ndarray) -> np.ndarray:
        """(n, residual_bytes) uint8 -> (n, dim) float32: np.take of each byte's bucket weights
        (faster than fancy indexing for this lookup)."""
        return np.take(self._weight_lut, packed, axis=0).reshape(len(packed), self.dim)

    def _native_table(self) -> tuple[np.ndarray, int, int]:
        return self._weight_lut, 0, self._weight_lut.shape[1]  # every byte position reads the same table

    # ------------------------------------------------------------------ on disk (FORMAT.md section 7)
    def manifest_entry(self, path: str) -> CodecEntry:
        return CodecEntry(self.manifest_kind, path, self.dim, self.nbits, self.num_centroids)

    def save(self, path: Path) -> None:
        write_group(path, {"kind": self.manifest_kind, "nbits": self.nbits, "avg_residual": self.avg_residual},
                    {name: self.centroids_f16 if name == "centroids" else getattr(self, name) for name in ARRAYS})

    @classmethod
    def load(cls, path: Path, entry: CodecEntry, *, nbits: int, dim: int) -> "ScalarCodec":
        """The codec saved at `path`, checked against the manifest's `nbits`."""
        attrs = read_attributes(path)
        arrays = {name: read_small(path / name) for name in ARRAYS}
        if attrs.get("nbits") != nbits:
            raise CorruptStoreError(f"{path}: codec nbits {attrs.get('nbits')} disagrees with the manifest ({nbits})")
        return cls(
            arrays["centroids"].astype(np.float16), arrays["bucket_cutoffs"].astype(np.float32),
            arrays["bucket_weights"].astype(np.float32), nbits, float(attrs.get("avg_residual", 0.0)),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScalarCodec):
            return NotImplemented
        return (
            self.nbits == other.nbits
            and np.array_equal(self.centroids, other.centroids)
            and np.array_equal(self.bucket_cutoffs, other.bucket_cutoffs)
            and np.array_equal(self.bucket_weights, other.bucket_weights)
        )

    __hash__ = None  # type: ignore[assignment]


#: The scalar codec's class under its name before the codec contract (kept for callers of lodestore.store).
ResidualCodec = ScalarCodec
