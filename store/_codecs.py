"""Which residual codec a store uses: argument checks at create, the writer settings, the manifest entry.

Two codecs share the centroid code and differ in the residual row
(FORMAT.md section 7): "scalar" (store/_codec.py, ColBERTv2's n-bit buckets per
dimension) and "pq" (store/_pq.py, one byte per residual subspace). The choice
is made at Store.create, kept in the manifest's settings until the first add
trains the codec, and from then on recorded in the manifest's codec entry and
the codec/ group.
"""

from __future__ import annotations

from typing import Any, Union

from ._codec import NBITS_ALLOWED, ResidualCodec, check_params
from ._manifest import PQ_READER_FEATURE
from ._pq import PQ_SUBSPACES_ALLOWED, PQCodec, check_pq_params

Codec = Union[ResidualCodec, PQCodec]

CODECS = ("scalar", "pq")
# pq: measured (docs/BENCHMARKS.md section 8) higher end-to-end recall@10 than scalar 2-bit at equal
# (d=128: +0.016, +0.010) or fewer (cranfield, d=384: 64 vs 96 B, +0.011) residual bytes, p50 within
# 10%; builds are slower.
DEFAULT_CODEC = "pq"
DEFAULT_NBITS = 2
# manifest codec.kind of each codec ("residual" is format v1's name for the scalar codec)
MANIFEST_KIND = {"scalar": "residual", "pq": "pq"}


def default_pq_subspaces(dim: int) -> int:
    """The most subspaces whose residual (m bytes) is no bigger than the 2-bit scalar codec's (dim/4 bytes)."""
    fits = [m for m in PQ_SUBSPACES_ALLOWED if dim % m == 0 and m <= dim // 4]
    if fits:
        return max(fits)
    divides = [m for m in PQ_SUBSPACES_ALLOWED if dim % m == 0]
    if not divides:
        raise ValueError(f"codec 'pq' needs dim divisible by one of {PQ_SUBSPACES_ALLOWED}, got dim {dim}")
    return min(divides)


def default_codec(dim: int) -> str:
    """DEFAULT_CODEC, unless it is pq and pq cannot fit the 2-bit scalar budget (dim/4 bytes) at this dim.

    pq needs 16 bytes a token at least: for dim < 64 (or a dim no allowed m divides) the
    scalar codec stays smaller, so it is the default there.
    """
    if DEFAULT_CODEC == "pq" and not any(dim % m == 0 and m <= dim // 4 for m in PQ_SUBSPACES_ALLOWED):
        return "scalar"
    return DEFAULT_CODEC


def resolve_codec(dim: int, nbits: int | None, codec: str | None, pq_subspaces: int | None) -> tuple[str, int, int | None]:
    """Check Store.create's codec arguments -> (codec name, manifest nbits, pq subspaces or None).

    codec=None picks from the other arguments: nbits given -> "scalar",
    pq_subspaces given -> "pq", neither -> default_codec(dim). A pq store's manifest
    nbits is 0 (it has no per-dimension bits).
    """
    if codec is None:
        codec = "scalar" if nbits is not None else "pq" if pq_subspaces is not None else default_codec(dim)
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    if codec == "scalar":
        if pq_subspaces is not None:
            raise ValueError("pq_subspaces applies only to codec='pq' (the scalar codec takes nbits)")
        nbits = DEFAULT_NBITS if nbits is None else nbits
        check_params(dim, nbits)
        return codec, int(nbits), None
    if nbits is not None:
        raise ValueError(f"nbits applies only to codec='scalar' (one of {NBITS_ALLOWED}); codec='pq' takes pq_subspaces")
    m = default_pq_subspaces(dim) if pq_subspaces is None else pq_subspaces
    check_pq_params(dim, m)
    return codec, 0, int(m)


def creation_settings(codec: str, pq_subspaces: int | None) -> dict[str, Any]:
    """Extra writer settings for the manifest (none for the scalar codec: its manifests stay as in v1)."""
    return {} if codec == "scalar" else {"codec": codec, "pq_subspaces": pq_subspaces}


def reader_features(codec: str) -> tuple[str, ...]:
    return (PQ_READER_FEATURE,) if codec == "pq" else ()


def settings_codec(settings: dict[str, Any]) -> tuple[str, int | None]:
    """(codec name, pq subspaces) a store was created with, from its manifest settings."""
    codec = settings.get("codec", "scalar")
    return codec, (int(settings["pq_subspaces"]) if codec == "pq" else None)


def train_codec(sample, kind: str, *, nbits: int, pq_subspaces: int | None, num_centroids: int, n_tokens: int,
                seed: int, residual_sample=None) -> Codec:
    """Train the store's codec on a token sample (pq also on a second, residual sample)."""
    if kind == "pq":
        return PQCodec.train(sample, pq_subspaces, num_centroids=num_centroids, n_tokens=n_tokens, seed=seed,
                             residual_sample=residual_sample)
    return ResidualCodec.train(sample, nbits, num_centroids=num_centroids, n_tokens=n_tokens, seed=seed)
