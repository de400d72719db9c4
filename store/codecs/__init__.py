"""The codec contract: what a codec is (`Codec`), which codecs exist (`CODECS`), and how a store picks one.

A codec turns unit token vectors into a centroid code plus a fixed-size residual row and
back (FORMAT.md section 7). Each codec is one module: store/codecs/scalar.py (ColBERTv2's
n-bit buckets per dimension) and store/codecs/pq.py (one byte per residual subspace); they
share the centroids (store/codecs/_centroids.py, _kmeans.py). A codec has one name in
code and at Store.create ("scalar", "pq"); its `manifest_kind` is what the manifest's
codec.kind and the codec/ group say on disk ("residual" is format v1's name for the
scalar codec, kept so old stores open unchanged).

The choice is made at Store.create, kept in the manifest's settings until the first add
trains the codec, and from then on recorded in the manifest's codec entry and codec/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from .._errors import CorruptStoreError, StoreError, UnsupportedFormatError
from .._manifest import CodecEntry, pq_reader_features
from .._smallarray import read_attributes, verify_small
from ._kmeans import default_num_centroids, training_sample_size
from .pq import PQ_SUBSPACES_ALLOWED, PQCodec, check_pq_params
from .scalar import NBITS_ALLOWED, ResidualCodec, ScalarCodec, check_params, pack_bits, unpack_bits

__all__ = [
    "CODECS", "Codec", "DEFAULT_CODEC", "DEFAULT_NBITS", "PQCodec", "ResidualCodec", "ScalarCodec",
    "codec_class", "creation_reader_features", "creation_settings", "default_codec", "default_num_centroids", "ensure_trained", "pack_bits",
    "read_codec", "resolve_codec", "settings_codec", "train_codec", "training_sample_size", "unpack_bits",
    "verify_codec", "write_codec",
]


@runtime_checkable
class Codec(Protocol):
    """A trained codec: everything the store (writing, reading, verifying) and the engine (scoring) call.

    Class attributes: `name` (its one name in code), `manifest_kind` (codec.kind on disk),
    `size_setting` (which Store.create argument sizes its residual: "nbits" or
    "pq_subspaces"), `arrays` (the arrays of its codec/ group), `reader_features` (what a reader must support to read it, FORMAT.md
    section 6) and `residual_sample_size` (tokens of a second draw its residual quantizer
    trains on; 0: none). Class methods: `train(sample, size, *, num_centroids, n_tokens,
    seed, residual_sample)` and `load(path, entry, *, nbits, dim)`.
    """

    name: ClassVar[str]
    manifest_kind: ClassVar[str]
    size_setting: ClassVar[str]
    arrays: ClassVar[tuple[str, ...]]
    reader_features: ClassVar[tuple[str, ...]]
    residual_sample_size: ClassVar[int]
    centroids: np.ndarray  # (K, dim) float32 holding float16 values, unit norm
    avg_residual: float

    @property
    def dim(self) -> int: ...
    @property
    def num_centroids(self) -> int: ...
    @property
    def code_dtype(self) -> np.dtype: ...
    @property
    def residual_bytes(self) -> int:
        """Bytes of one token's residual row (a fixed size: segments copy rows without the codec)."""
    @property
    def manifest_nbits(self) -> int:
        """The manifest's `nbits` for a store of this codec."""

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Nearest centroid of each unit row of x (code_dtype)."""
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) unit vectors -> (codes (n,), residual rows (n, residual_bytes) uint8)."""
    def decode(self, codes: np.ndarray, rows: np.ndarray, *, normalize: bool = True) -> np.ndarray:
        """codes + residual rows -> (n, dim) float32 (unit norm unless normalize=False)."""
    def byte_tables(self) -> np.ndarray:
        """(residual_bytes, 256, w): what byte j of a row adds to its w dimensions, per byte value."""
    def manifest_entry(self, path: str) -> CodecEntry:
        """The manifest's codec entry for this codec saved at `path` (relative to the store)."""
    def save(self, path: Path) -> None:
        """Write the codec/ group (FORMAT.md section 7) at `path`, which must not exist."""


#: Every codec, by its one name.
CODECS: dict[str, type[ScalarCodec] | type[PQCodec]] = {cls.name: cls for cls in (ScalarCodec, PQCodec)}
_BY_KIND = {cls.manifest_kind: cls for cls in CODECS.values()}
# pq: higher end-to-end recall@10 than scalar 2-bit at equal or fewer residual bytes, at
# about the same latency; builds are slower (docs/BENCHMARKS.md section 8).
DEFAULT_CODEC = "pq"
DEFAULT_NBITS = 2


def codec_class(name: str) -> type[ScalarCodec] | type[PQCodec]:
    """The codec class of a name (ValueError for a name no codec has)."""
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"codec must be one of {tuple(CODECS)}, got {name!r}") from None


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
    codec_class(codec)
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


def creation_reader_features(codec: str, pq_subspaces: int | None) -> tuple[str, ...]:
    """The reader features a store created with this codec lists from generation 0 (FORMAT.md section 6):
    codec-pq for pq, and codec-pq-wide beside it for 96 or 128 subspaces."""
    return pq_reader_features(pq_subspaces) if codec == "pq" else codec_class(codec).reader_features


def settings_codec(settings: dict[str, Any]) -> tuple[str, int | None]:
    """(codec name, pq subspaces) a store was created with, from its manifest settings."""
    codec = settings.get("codec", "scalar")
    return codec, (int(settings["pq_subspaces"]) if codec == "pq" else None)


def train_codec(sample: np.ndarray, name: str, *, nbits: int, pq_subspaces: int | None, num_centroids: int,
                n_tokens: int, seed: int, residual_sample: np.ndarray | None = None) -> Codec:
    """Train codec `name` on a token sample, sized by the store's nbits or pq_subspaces (its size_setting)."""
    cls = codec_class(name)
    size = {"nbits": nbits, "pq_subspaces": pq_subspaces}[cls.size_setting]
    return cls.train(sample, size, num_centroids=num_centroids, n_tokens=n_tokens, seed=seed,
                     residual_sample=residual_sample)


def write_codec(path: Path, codec: Codec) -> None:
    """Save a trained codec as the codec/ group at `path` (FORMAT.md section 7)."""
    codec.save(path)


def read_codec(path: Path, entry: CodecEntry, *, nbits: int, dim: int) -> Codec:
    """The codec a manifest's codec entry names (UnsupportedFormatError for a kind this version does not know)."""
    cls = _BY_KIND.get(entry.kind)
    if cls is None:
        raise UnsupportedFormatError(f"{path}: codec kind {entry.kind!r} is unknown to this lodestore; "
                                     "upgrade it to read this store")
    return cls.load(path, entry, nbits=nbits, dim=dim)


def verify_codec(path: Path) -> tuple[int, list[str]]:
    """(chunks checked, failures) over the arrays of the codec/ group at `path`."""
    try:
        kind = read_attributes(path).get("kind")
    except CorruptStoreError as e:
        return 0, [str(e)]
    checked, failures = 0, []
    if not isinstance(kind, str):  # a damaged attribute (a list, a number): reported, and the arrays still checked
        if kind is not None:
            failures.append(f"{path}/zarr.json: codec kind {kind!r} is not a string")
        kind = None
    for name in _BY_KIND.get(kind, ScalarCodec).arrays:
        c, f = verify_small(path / name)
        checked += c
        failures += f
    return checked, failures


def ensure_trained(codec: Codec | None) -> Codec:
    """The store's codec, or a clear error when nothing has been added yet."""
    if codec is None:
        raise StoreError("the store has no codec yet: add documents first (the first add trains it)")
    return codec
