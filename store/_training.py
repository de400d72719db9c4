"""Fitting a store's codec state at its first add: the reduction matrix, the codec, the drift threshold.

All three come from token samples of the first add's source and are written once, in
the same commit as its segment (FORMAT.md section 12, invariant 5); later adds reuse them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import _drift
from ._ingest import DocSource
from .codecs import (Codec, codec_class, default_num_centroids, settings_codec, train_codec, training_sample_size,
                     write_codec)
from ._projection import fit_projection, project, write_projection


class CodecState(NamedTuple):
    """A store's trained codec state: what the first add fits, or what a sharded store copies into every shard."""

    projection: np.ndarray | None  # (input_dim, dim) reduction matrix, or None when the store does not reduce
    codec: Codec
    limit: float | None  # the drift threshold (store/_drift.py), or None


def train_codec_state(settings: dict[str, Any], *, dim: int, input_dim: int, nbits: int,
                      source: DocSource) -> CodecState:
    """(reduction matrix or None, codec, drift threshold), all fitted on token samples of the first add.

    `settings` are the manifest's writer settings (codec, num_centroids, seed, reduction).
    The drift threshold (store/_drift.py) comes from up to 2^14 tokens k-means did not
    see, when the source has more tokens than the training sample; otherwise from the
    training sample itself (small first adds: later segments of the same data then
    read above 1%).
    """
    kind, pq_subspaces = settings_codec(settings)
    k = settings.get("num_centroids") or default_num_centroids(source.n_tokens)
    seed = int(settings.get("seed", 0))
    n_train = training_sample_size(source.n_tokens, k)
    n_probe = min(_drift.THRESHOLD_SAMPLE, source.n_tokens - n_train)
    if n_probe > 0:
        both = source.sample(n_train + n_probe, seed)
        order = np.random.default_rng(seed + 1).permutation(len(both))  # bundle samples come in file order
        sample, probe = both[order[:n_train]], both[order[n_train:]]
    else:
        sample = source.sample(n_train, seed)
        probe = sample[np.random.default_rng(seed + 1).permutation(len(sample))[: _drift.THRESHOLD_SAMPLE]]
    # pq: its codebooks learn from a second draw (residuals of tokens k-means did not fit)
    n_residual = codec_class(kind).residual_sample_size
    residual_sample = source.sample(n_residual, seed + 1) if n_residual else None
    projection = None
    if input_dim != dim:
        projection = fit_projection(settings["reduction"], sample, dim, seed)
        sample, probe = project(sample, projection), project(probe, projection)
        if residual_sample is not None:
            residual_sample = project(residual_sample, projection)
    codec = train_codec(sample, kind, nbits=nbits, pq_subspaces=pq_subspaces, num_centroids=k,
                        n_tokens=source.n_tokens, seed=seed, residual_sample=residual_sample)
    limit = _drift.threshold(codec.centroids, probe, codec.assign(probe)) if len(probe) else None
    if codec.num_centroids < k:
        warnings.warn(
            f"the first add has only {source.n_tokens} tokens: the codec gets {codec.num_centroids} centroids "
            f"instead of {k}, for the life of this store; add a representative first batch for better compression",
            stacklevel=4,
        )
    return CodecState(projection, codec, limit)


def write_codec_state(codec_path: Path, codec: Codec, limit: float | None, projection_path: Path,
                      projection: np.ndarray | None, reduction: str | None) -> None:
    """Write the first add's projection/ (when the store reduces) and codec/ groups, not yet fsynced."""
    if projection is not None:
        write_projection(projection_path, projection, reduction)
    write_codec(codec_path, codec)
    if limit is not None:
        _set_attributes(codec_path, {_drift.THRESHOLD_ATTR: limit})


def _set_attributes(group_path: Path, attrs: dict[str, Any]) -> None:
    """Add attributes to a Zarr group being written (before its tree is fsynced)."""
    import zarr

    zarr.open_group(str(group_path), mode="r+").attrs.update(attrs)
