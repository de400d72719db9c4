"""The manifest: the one small JSON file that names a committed generation.

Replaced atomically on every commit (FORMAT.md sections 5 and 12). Its body
carries a CRC32C so a torn or edited manifest is reported, never trusted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c

from ._errors import CorruptStoreError, StoreError, UnsupportedFormatError
from ._fs import atomic_replace

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "lodestore"
FORMAT_VERSION = 1
OLDEST_READABLE_VERSION = 1
# Feature flags (FORMAT.md section 6). A reader refuses a store naming a reader
# feature it does not know; a writer refuses one naming an unknown writer feature.
# "codec-pq": the store's codec is the residual product quantizer (FORMAT.md section 7.5).
PQ_READER_FEATURE = "codec-pq"
KNOWN_READER_FEATURES: frozenset[str] = frozenset({PQ_READER_FEATURE})
#: "projection": documents arrive with settings.input_dim values and must be projected
#: (FORMAT.md 7.6); a writer that would store them unprojected must refuse the store.
KNOWN_WRITER_FEATURES: frozenset[str] = frozenset({"projection"})
# codec.kind values this version reads: "residual" (the scalar codec) and "pq"
KNOWN_CODEC_KINDS: frozenset[str] = frozenset({"residual", "pq"})


@dataclass(frozen=True)
class SegmentEntry:
    """One committed segment: its directory name under segments/, sizes, deletion file."""

    name: str
    documents: int
    tokens: int
    deletes: str | None = None  # file name under segments/, or None when nothing is deleted
    deleted: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SegmentEntry":
        return cls(
            name=str(d["name"]), documents=int(d["documents"]), tokens=int(d["tokens"]),
            deletes=d.get("deletes"), deleted=int(d.get("deleted", 0)),
        )


@dataclass(frozen=True)
class CodecEntry:
    """Codec parameters recorded in the manifest; the arrays live under `path`."""

    kind: str
    path: str
    dim: int
    nbits: int
    num_centroids: int
    pq_subspaces: int | None = None  # kind "pq" only: bytes per residual row

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.pq_subspaces is None:  # scalar entries stay exactly as format v1 wrote them
            del d["pq_subspaces"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CodecEntry":
        m = d.get("pq_subspaces")
        return cls(kind=str(d["kind"]), path=str(d["path"]), dim=int(d["dim"]), nbits=int(d["nbits"]),
                   num_centroids=int(d["num_centroids"]), pq_subspaces=None if m is None else int(m))


@dataclass(frozen=True)
class Manifest:
    """The committed state of a store at one generation."""

    generation: int
    dim: int
    nbits: int
    codec: CodecEntry | None = None
    segments: tuple[SegmentEntry, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    encoder: dict[str, Any] | None = None
    reader_features: tuple[str, ...] = ()
    writer_features: tuple[str, ...] = ()
    format_version: int = FORMAT_VERSION

    @property
    def documents(self) -> int:
        return sum(s.documents - s.deleted for s in self.segments)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.segments)

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "generation": self.generation,
            "dim": self.dim,
            "nbits": self.nbits,
            "codec": self.codec.to_dict() if self.codec else None,
            "segments": [s.to_dict() for s in self.segments],
            "settings": dict(self.settings),
            "encoder": self.encoder,
            "reader_features": list(self.reader_features),
            "writer_features": list(self.writer_features),
        }

    def to_bytes(self) -> bytes:
        body = self.body()
        doc = dict(body, checksum=f"crc32c:{_body_crc(body):08x}")
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = MANIFEST_NAME) -> "Manifest":
        try:
            doc = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorruptStoreError(f"{source}: not valid JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise CorruptStoreError(f"{source}: not a lodestore manifest")
        version = doc.get("format_version")
        if not isinstance(version, int) or not OLDEST_READABLE_VERSION <= version <= FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"{source}: store format version {version!r} is not supported by this lodestore "
                f"(it reads versions {OLDEST_READABLE_VERSION}..{FORMAT_VERSION}); "
                "upgrade lodestore to open this store"
            )
        checksum = doc.pop("checksum", None)
        if checksum != f"crc32c:{_body_crc(doc):08x}":
            raise CorruptStoreError(f"{source}: body checksum mismatch (stored {checksum!r})")
        unknown = set(doc.get("reader_features", [])) - KNOWN_READER_FEATURES
        if unknown:
            raise UnsupportedFormatError(
                f"{source}: store needs reader features {sorted(unknown)} unknown to this lodestore; upgrade it"
            )
        codec = doc.get("codec")
        if isinstance(codec, dict) and codec.get("kind") not in KNOWN_CODEC_KINDS:
            raise UnsupportedFormatError(
                f"{source}: store uses codec {codec.get('kind')!r}, unknown to this lodestore "
                f"(it reads {sorted(KNOWN_CODEC_KINDS)}); upgrade lodestore to open this store"
            )
        try:
            return cls(
                generation=int(doc["generation"]), dim=int(doc["dim"]), nbits=int(doc["nbits"]),
                codec=CodecEntry.from_dict(doc["codec"]) if doc.get("codec") else None,
                segments=tuple(SegmentEntry.from_dict(s) for s in doc["segments"]),
                settings=dict(doc.get("settings") or {}), encoder=doc.get("encoder"),
                reader_features=tuple(doc.get("reader_features", [])),
                writer_features=tuple(doc.get("writer_features", [])), format_version=version,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptStoreError(f"{source}: malformed field ({e!r})") from None

    def check_writable(self) -> None:
        unknown = set(self.writer_features) - KNOWN_WRITER_FEATURES
        if unknown or self.format_version != FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"this lodestore cannot write a store of format {self.format_version} with writer features "
                f"{sorted(unknown)}; open it read-only or upgrade lodestore"
            )


def _body_crc(body: dict[str, Any]) -> int:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return google_crc32c.value(canonical)


def read_manifest(root: Path) -> Manifest:
    """Read and check the manifest of the store at `root`."""
    path = root / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{root}: not a lodestore store (no {MANIFEST_NAME})") from None
    return Manifest.from_bytes(data, source=str(path))


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Commit point: atomically replace the manifest (FORMAT.md section 12, steps 4-7)."""
    atomic_replace(root / MANIFEST_NAME, manifest.to_bytes(), step="manifest")
