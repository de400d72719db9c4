"""Linear dimension reduction of token vectors before they are encoded: PCA or a random rotation.

A store created with `input_dim > dim` fits a (input_dim, dim) matrix at its first
add (on the same token sample k-means trains on), keeps it with the codec state,
and applies it to every document it is given and, in the engine, to every query;
vectors are L2-normalized again after projecting. Why: the packaged encoder
gives 384-d vectors (96 bytes per token at 2 bits); projected to 128-d they cost
a third. docs/BENCHMARKS.md section 7.3 measures what that does to nDCG@10.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._errors import StoreError
from ._segment import write_small_array
from ._smallarray import read_small

REDUCTIONS = ("pca", "random")


def fit_projection(kind: str, sample: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """A (input_dim, dim) float32 matrix with orthonormal columns.

    pca: the top-`dim` principal directions of the (uncentered) sample, i.e. the
    subspace that keeps the most of the inner products MaxSim uses; random: a
    seeded random orthonormal basis (a baseline that needs no data).
    """
    input_dim = sample.shape[1]
    if kind not in REDUCTIONS:
        raise ValueError(f"unknown reduction {kind!r}; expected one of {REDUCTIONS}")
    if not 1 <= dim < input_dim:
        raise ValueError(f"reduced dim must be in [1, {input_dim}), got {dim}")
    if kind == "random":
        q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((input_dim, dim)))
        return (q * np.sign(np.diag(r))).astype(np.float32)
    x = np.asarray(sample, dtype=np.float64)
    if len(x) < dim:
        raise ValueError(f"PCA to {dim} dimensions needs at least {dim} sample vectors, got {len(x)}")
    # Uncentered: MaxSim scores are raw inner products, so keep the directions of largest second moment.
    eigvals, eigvecs = np.linalg.eigh(x.T @ x)
    top = eigvecs[:, np.argsort(eigvals)[::-1][:dim]]
    top *= np.where(top[np.abs(top).argmax(axis=0), np.arange(dim)] < 0, -1.0, 1.0)  # deterministic signs
    return top.astype(np.float32)


def project(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Rows of x projected and L2-normalized again (float32)."""
    y = np.asarray(x, dtype=np.float32) @ matrix
    norms = np.linalg.norm(y, axis=-1, keepdims=True)
    return y / np.maximum(norms, 1e-12)


def write_projection(path: Path, matrix: np.ndarray, kind: str) -> None:
    """The reduction matrix as a Zarr group: attributes + one flat float32 array (FORMAT.md 7.6)."""
    import zarr

    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    group.attrs.update({"kind": kind, "input_dim": int(matrix.shape[0]), "dim": int(matrix.shape[1])})
    write_small_array(group, "matrix", np.ascontiguousarray(matrix, dtype=np.float32).ravel())


def read_projection(path: Path, input_dim: int, dim: int) -> np.ndarray:
    """The (input_dim, dim) matrix write_projection wrote at `path` (StoreError if its size disagrees)."""
    flat = read_small(path / "matrix")
    if flat.size != input_dim * dim:
        raise StoreError(f"{path}: matrix has {flat.size} values, expected {input_dim}x{dim}")
    return flat.reshape(input_dim, dim)
