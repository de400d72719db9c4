"""Creating a store directory: Store.create's argument checks, the first manifest (generation 0), the lock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .codecs import creation_reader_features, creation_settings, resolve_codec
from ._commit import SEGMENTS_DIR, acquire_lock
from ._fs import fsync_dir
from ._manifest import POOLING_WRITER_FEATURE, Manifest, write_manifest
from ._pooling import check_pool_factor
from ._projection import REDUCTIONS


def new_store(root: Path, dim: Any, nbits: int | None, *, codec: str | None, pq_subspaces: int | None,
          num_centroids: int | None, seed: int, encoder: dict[str, Any] | None, input_dim: int | None,
          reduction: str, pool_factor: int) -> tuple[Path, Manifest, int]:
    """Check Store.create's arguments, make the directory and write its empty manifest: (root, manifest, lock fd).

    Nothing is written when an argument is bad or `root` is a non-empty directory.
    """
    codec, nbits, pq_subspaces = resolve_codec(dim, nbits, codec, pq_subspaces)
    pool_factor = check_pool_factor(pool_factor)
    if num_centroids is not None and not 1 <= num_centroids <= 65536:
        raise ValueError(f"num_centroids must be in [1, 65536], got {num_centroids}")
    settings: dict[str, Any] = {"num_centroids": num_centroids, "seed": int(seed)}
    if input_dim is not None and input_dim != dim:
        if not isinstance(input_dim, int) or input_dim < dim:
            raise ValueError(f"input_dim must be an integer larger than dim={dim}, got {input_dim!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
        settings.update(input_dim=int(input_dim), reduction=reduction)
    if pool_factor > 1:  # absent = 1: a store that does not pool is written as before pooling existed
        settings["pool_factor"] = pool_factor
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: exists and is not an empty directory; refusing to create a store there")
    root.mkdir(parents=True, exist_ok=True)
    (root / SEGMENTS_DIR).mkdir()
    lock_fd = acquire_lock(root)
    manifest = Manifest(generation=0, dim=int(dim), nbits=int(nbits),
                        settings={**settings, **creation_settings(codec, pq_subspaces)}, encoder=encoder,
                        reader_features=creation_reader_features(codec, pq_subspaces),
                        writer_features=(("projection",) if "input_dim" in settings else ())
                        + ((POOLING_WRITER_FEATURE,) if pool_factor > 1 else ()))
    write_manifest(root, manifest)
    fsync_dir(root.parent)
    return root, manifest, lock_fd
