"""Where the trained codec lives on disk: the `codec/` Zarr group (FORMAT.md section 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._codec import ResidualCodec
from ._errors import CorruptStoreError, UnsupportedFormatError
from ._pq import PQ_BITS, PQCodec
from ._smallarray import read_attributes, read_small, verify_small

CODEC_ARRAYS = ("centroids", "bucket_cutoffs", "bucket_weights")
PQ_CODEC_ARRAYS = ("centroids", "pq_codebooks")


def write_codec(path: Path, codec: ResidualCodec | PQCodec) -> None:
    import zarr
    from zarr.codecs import BytesCodec, Crc32cCodec

    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    if isinstance(codec, PQCodec):
        group.attrs.update({"kind": "pq", "pq_subspaces": codec.subspaces, "pq_bits": PQ_BITS,
                            "avg_residual": codec.avg_residual})
        arrays = {"centroids": codec.centroids_f16, "pq_codebooks": codec.codebooks.astype("<f4")}
    else:
        group.attrs.update({"kind": "residual", "nbits": codec.nbits, "avg_residual": codec.avg_residual})
        arrays = {name: codec.centroids_f16 if name == "centroids" else getattr(codec, name) for name in CODEC_ARRAYS}
    for name, data in arrays.items():
        arr = group.create_array(
            name, shape=data.shape, dtype=data.dtype, chunks=data.shape,
            serializer=BytesCodec(endian="little"), compressors=[Crc32cCodec()], fill_value=0,
            config={"write_empty_chunks": True},
        )
        arr[...] = data


def read_codec(path: Path, nbits: int) -> ResidualCodec:
    attrs = read_attributes(path)
    arrays = {name: read_small(path / name) for name in CODEC_ARRAYS}
    if attrs.get("nbits") != nbits:
        raise CorruptStoreError(f"{path}: codec nbits {attrs.get('nbits')} disagrees with the manifest ({nbits})")
    return ResidualCodec(
        arrays["centroids"].astype(np.float16), arrays["bucket_cutoffs"].astype(np.float32),
        arrays["bucket_weights"].astype(np.float32), nbits, float(attrs.get("avg_residual", 0.0)),
    )


def read_pq_codec(path: Path, subspaces: int, dim: int) -> PQCodec:
    attrs = read_attributes(path)
    if attrs.get("kind") != "pq" or attrs.get("pq_subspaces") != subspaces or attrs.get("pq_bits") != PQ_BITS:
        raise CorruptStoreError(f"{path}: codec attributes {attrs} disagree with the manifest (pq, {subspaces} subspaces)")
    centroids = read_small(path / "centroids")
    codebooks = read_small(path / "pq_codebooks")
    if codebooks.shape != (subspaces, 1 << PQ_BITS, dim // subspaces) or centroids.ndim != 2 or centroids.shape[1] != dim:
        raise CorruptStoreError(f"{path}: codec arrays have shapes {centroids.shape}, {codebooks.shape}; "
                                f"expected (K, {dim}) and ({subspaces}, {1 << PQ_BITS}, {dim // subspaces})")
    return PQCodec(centroids.astype(np.float16), codebooks.astype(np.float32), float(attrs.get("avg_residual", 0.0)))


def read_store_codec(path: Path, kind: str, *, nbits: int, dim: int, pq_subspaces: int | None) -> ResidualCodec | PQCodec:
    """The codec a manifest's codec entry names (UnsupportedFormatError for a kind this version does not know)."""
    if kind == "residual":
        return read_codec(path, nbits)
    if kind == "pq":
        if pq_subspaces is None:
            raise CorruptStoreError(f"{path}: the manifest's pq codec entry has no pq_subspaces")
        return read_pq_codec(path, pq_subspaces, dim)
    raise UnsupportedFormatError(f"{path}: codec kind {kind!r} is unknown to this lodestore; upgrade it to read this store")


def verify_codec(path: Path) -> tuple[int, list[str]]:
    try:
        kind = read_attributes(path).get("kind")
    except CorruptStoreError as e:
        return 0, [str(e)]
    checked, failures = 0, []
    for name in PQ_CODEC_ARRAYS if kind == "pq" else CODEC_ARRAYS:
        c, f = verify_small(path / name)
        checked += c
        failures += f
    return checked, failures
