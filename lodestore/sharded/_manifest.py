"""The root manifest of a sharded store: shard count, routing rule, shared codec identity, shard locations.

One small JSON file, `sharded.json`, at the root (docs/FORMAT.md section 15), with a CRC32C over
its canonical body as the store manifest has (FORMAT.md 5.3) and replaced atomically
(write, fsync, rename, fsync the directory). Each shard is an ordinary lodestore store.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import google_crc32c

from lodestore.store import CorruptStoreError, StoreError, UnsupportedFormatError

ROOT_MANIFEST = "sharded.json"
FORMAT_NAME = "lodestore-sharded"
FORMAT_VERSION = 1
MAX_ROOT_BYTES = 1 << 20
MAX_SHARDS = 4096
#: The one routing rule of format version 1: BLAKE2b with an 8-byte digest of the id's UTF-8 bytes,
#: read as a big-endian unsigned integer, modulo the shard count.
ROUTING = {"hash": "blake2b", "digest_bytes": 8, "byteorder": "big", "rule": "mod"}
#: The files that make up a shard's codec state (FORMAT.md section 7): hashed for its identity.
CODEC_TREES = ("codec", "projection")


def shard_of(doc_id: str, n_shards: int) -> int:
    """The shard holding `doc_id`: stable across processes, machines and Python versions (not hash())."""
    digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


def route(ids: list[str], n_shards: int) -> list[list[int]]:
    """Positions of `ids` per shard, in input order."""
    out: list[list[int]] = [[] for _ in range(n_shards)]
    for pos, doc_id in enumerate(ids):
        out[shard_of(doc_id, n_shards)].append(pos)
    return out


def codec_identity(store_root: str | os.PathLike) -> str:
    """"blake2b:" + hex digest over the codec state's files of one store (codec/ and projection/), by path.

    Shards that adopted the same codec state hold byte-identical files, so equal identities.
    """
    h = hashlib.blake2b(digest_size=32)
    root = Path(store_root)
    for tree in CODEC_TREES:
        base = root / tree
        if not base.is_dir() or base.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_symlink():
                    raise CorruptStoreError(f"{path}: a symlink in a shard's codec state")
                rel = path.relative_to(root).as_posix().encode()
                data = path.read_bytes()
                h.update(len(rel).to_bytes(8, "big") + rel + len(data).to_bytes(8, "big") + data)
    return "blake2b:" + h.hexdigest()


@dataclass(frozen=True)
class ShardEntry:
    """One shard: its name, its store's path (relative to the root, or absolute on its own disk),
    and the Ray custom resource of the node that should serve it (or None: anywhere)."""

    name: str
    path: str
    resource: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "resource": self.resource}


@dataclass(frozen=True)
class RootManifest:
    """What `sharded.json` records. `codec` is None until the first add trains the shared codec."""

    dim: int
    input_dim: int
    shards: tuple[ShardEntry, ...]
    codec: dict[str, Any] | None = None  # {"identity", "kind", "num_centroids"}
    routing: dict[str, Any] = field(default_factory=lambda: dict(ROUTING))

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    def shard_path(self, root: Path, i: int) -> Path:
        p = Path(self.shards[i].path)
        return p if p.is_absolute() else root / p

    def with_codec(self, identity: str, kind: str, num_centroids: int) -> "RootManifest":
        return replace(self, codec={"identity": identity, "kind": kind, "num_centroids": int(num_centroids)})

    def body(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "dim": self.dim,
                "input_dim": self.input_dim, "routing": self.routing, "codec": self.codec,
                "shards": [s.to_dict() for s in self.shards]}

    def to_bytes(self) -> bytes:
        body = self.body()
        doc = {**body, "checksum": _checksum(body)}
        return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> "RootManifest":
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise CorruptStoreError(f"{source}: not valid JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise CorruptStoreError(f"{source}: not a lodestore sharded root manifest")
        if doc.get("format_version") != FORMAT_VERSION:
            raise UnsupportedFormatError(f"{source}: sharded format version {doc.get('format_version')!r} is not "
                                         f"{FORMAT_VERSION}; upgrade lodestore to read it")
        claimed = doc.pop("checksum", None)
        if claimed != _checksum(doc):
            raise CorruptStoreError(f"{source}: checksum mismatch (recorded {claimed!r}, body {_checksum(doc)})")
        if doc.get("routing") != ROUTING:
            raise UnsupportedFormatError(f"{source}: routing rule {doc.get('routing')!r} is unknown to this lodestore")
        try:
            shards = tuple(_shard(s) for s in doc["shards"])
            dim, input_dim, codec = int(doc["dim"]), int(doc["input_dim"]), doc["codec"]
            if not 1 <= len(shards) <= MAX_SHARDS or len({s.name for s in shards}) != len(shards):
                raise ValueError(f"{len(shards)} shards (1..{MAX_SHARDS}, names unique)")
            if codec is not None and not isinstance(codec.get("identity"), str):
                raise ValueError("codec entry without an identity")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CorruptStoreError(f"{source}: bad field ({e})") from None
        return cls(dim=dim, input_dim=input_dim, shards=shards, codec=codec)


def _shard(d: Any) -> ShardEntry:
    name, path, resource = d["name"], d["path"], d.get("resource")
    if not (isinstance(name, str) and name and "/" not in name and isinstance(path, str) and path):
        raise ValueError(f"shard entry {d!r}")
    if resource is not None and not isinstance(resource, str):
        raise ValueError(f"shard {name}: resource {resource!r}")
    return ShardEntry(name, path, resource)


def _checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode("ascii")
    return "crc32c:%08x" % google_crc32c.value(canonical)


def is_sharded_root(path: str | os.PathLike | None) -> bool:
    """Whether `path` is a sharded store's root (holds sharded.json): cheap, for the CLI's dispatch."""
    return path is not None and (Path(path) / ROOT_MANIFEST).is_file()


def read_root(root: Path) -> RootManifest:
    path = root / ROOT_MANIFEST
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ROOT_BYTES + 1)
    except FileNotFoundError:
        raise StoreError(f"{root}: not a sharded lodestore store (no {ROOT_MANIFEST})") from None
    if len(data) > MAX_ROOT_BYTES:
        raise CorruptStoreError(f"{path}: larger than {MAX_ROOT_BYTES} bytes")
    return RootManifest.from_bytes(data, str(path))


def write_root(root: Path, manifest: RootManifest) -> None:
    """Atomically replace the root manifest (the store's own write-fsync-rename-fsync)."""
    from lodestore.store._fs import atomic_replace

    atomic_replace(root / ROOT_MANIFEST, manifest.to_bytes(), step="sharded_manifest")
