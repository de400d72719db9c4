"""What every codec shares: float16 unit centroids, the nearest-centroid search, decoding, the codec/ group.

A codec class derives from CentroidCodec and adds its residual: `decode_residuals` (numpy)
and `_native_table` (the lookup table the C decode kernel, store/_native.py, reads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._native import decode as native_decode
from ._assign import CellAssigner

ENCODE_BATCH = 1 << 15
IVF_ASSIGN_MIN_K = 4096  # below this the exact flat scan is cheap enough


def as_centroids(centroids: np.ndarray) -> np.ndarray:
    """Centroids rounded to float16 (what is stored), held as one C-contiguous float32 copy."""
    return np.ascontiguousarray(np.asarray(centroids).astype(np.float16).astype(np.float32))


class CentroidCodec:
    """Base of the codecs: `centroids` (K, dim) float32 holding float16 values, unit norm."""

    centroids: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def num_centroids(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def code_dtype(self) -> np.dtype:
        """uint16: K never exceeds 65536."""
        return np.dtype(np.uint16)

    @property
    def centroids_f16(self) -> np.ndarray:
        """Centroids as stored on disk (float16)."""
        return self.centroids.astype(np.float16)

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Nearest centroid (max inner product) of each row of x, as code_dtype."""
        assigner = self._assigner()
        out = np.empty(len(x), dtype=self.code_dtype)
        for s in range(0, len(x), ENCODE_BATCH):
            out[s : s + ENCODE_BATCH] = assigner(np.ascontiguousarray(x[s : s + ENCODE_BATCH], dtype=np.float32))
        return out

    def _assigner(self):
        """rows -> nearest centroid ids: the exact scan (faiss) for small K; above that the IVF run as
        matrix products (store/codecs/_assign.py), which finds the exact nearest centroid for almost
        every token at a fraction of the scan's time (docs/BENCHMARKS.md section C20). Deterministic."""
        fn = getattr(self, "_assign_fn", None)
        if fn is None:
            if self.num_centroids < IVF_ASSIGN_MIN_K:
                import faiss

                flat = faiss.IndexFlatIP(self.dim)
                flat.add(self.centroids)
                fn = lambda v: flat.search(v, 1)[1][:, 0]  # noqa: E731
            else:
                fn = CellAssigner(self.centroids).assign
            object.__setattr__(self, "_assign_fn", fn)
        return fn

    def _check_vectors(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) vectors, got shape {x.shape}")
        return x

    def decode_residuals(self, rows: np.ndarray) -> np.ndarray:
        """(n, residual_bytes) uint8 -> (n, dim) float32 residuals."""
        raise NotImplementedError

    def _native_table(self) -> tuple[np.ndarray, int, int]:
        """(lut, lut_pos_stride, width) for the C decode kernel (store/_native.py's decode)."""
        raise NotImplementedError

    def decode(self, codes: np.ndarray, rows: np.ndarray, *, normalize: bool = True) -> np.ndarray:
        """Decode codes + residual rows -> (n, dim) float32 (unit norm unless normalize=False).

        With the C kernel (store/_native.py) one pass per token, the GIL released, the same
        values to ~1 ulp; else numpy: centroid gather + decode_residuals, then the norm.
        """
        if native_decode is not None:
            lut, stride, width = self._native_table()
            return native_decode(self.centroids, codes, lut, stride, width, rows, normalize)
        out = np.take(self.centroids, codes, axis=0)
        out += self.decode_residuals(rows)
        if normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", out, out))
            out /= np.maximum(norms, 1e-12)[:, None]
        return out


def write_group(path: Path, attrs: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """The codec/ Zarr group (FORMAT.md section 7): `attrs`, and each array as one CRC32C-checked chunk."""
    import zarr
    from zarr.codecs import BytesCodec, Crc32cCodec

    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    group.attrs.update(attrs)
    for name, data in arrays.items():
        arr = group.create_array(
            name, shape=data.shape, dtype=data.dtype, chunks=data.shape,
            serializer=BytesCodec(endian="little"), compressors=[Crc32cCodec()], fill_value=0,
            config={"write_empty_chunks": True},
        )
        arr[...] = data
