"""Where the trained codec lives on disk: the `codec/` Zarr group (FORMAT.md section 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._codec import ResidualCodec
from ._errors import CorruptStoreError
from ._smallarray import read_attributes, read_small, verify_small

CODEC_ARRAYS = ("centroids", "bucket_cutoffs", "bucket_weights")


def write_codec(path: Path, codec: ResidualCodec) -> None:
    import zarr
    from zarr.codecs import BytesCodec, Crc32cCodec

    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    group.attrs.update({"kind": "residual", "nbits": codec.nbits, "avg_residual": codec.avg_residual})
    for name in CODEC_ARRAYS:
        data = codec.centroids_f16 if name == "centroids" else getattr(codec, name)
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


def verify_codec(path: Path) -> tuple[int, list[str]]:
    checked, failures = 0, []
    for name in CODEC_ARRAYS:
        c, f = verify_small(path / name)
        checked += c
        failures += f
    return checked, failures
