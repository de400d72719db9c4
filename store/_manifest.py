"""The manifest: the one small JSON file that names a committed generation.

Replaced atomically on every commit (FORMAT.md sections 5 and 12). Its body
carries a CRC32C so a torn or edited manifest is reported, never trusted.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c

from ._metadata import check_schema
from ._errors import CorruptStoreError, StoreError, UnsupportedFormatError
from ._fs import atomic_replace
from ._safefs import StorePath, parse_json

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "lodestore"
FORMAT_VERSION = 1
OLDEST_READABLE_VERSION = 1
# Feature flags (FORMAT.md section 6). A reader refuses a store naming a reader
# feature it does not know; a writer refuses one naming an unknown writer feature.
# "codec-pq": the store's codec is the residual product quantizer (FORMAT.md section 7.5).
PQ_READER_FEATURE = "codec-pq"
# "codec-pq-wide": a pq codec of 96 or 128 subspaces (FORMAT.md section 7.5), which readers that know
# only 16, 32 and 64 would take for corruption; listed beside codec-pq so they refuse it as unsupported.
PQ_WIDE_READER_FEATURE = "codec-pq-wide"
PQ_NARROW_SUBSPACES = (16, 32, 64)
PQ_WIDE_SUBSPACES = (96, 128)
KNOWN_READER_FEATURES: frozenset[str] = frozenset({PQ_READER_FEATURE, PQ_WIDE_READER_FEATURE})


def pq_reader_features(subspaces: int) -> tuple[str, ...]:
    """The reader features of a store created with the pq codec of `subspaces` subspaces."""
    return (PQ_READER_FEATURE,) + ((PQ_WIDE_READER_FEATURE,) if subspaces in PQ_WIDE_SUBSPACES else ())
#: "projection": documents arrive with settings.input_dim values and must be projected
#: (FORMAT.md 7.6); a writer that would store them unprojected must refuse the store.
#: "token-pooling": documents are pooled at settings.pool_factor before they are stored
#: (FORMAT.md 7.7); a writer that would store them unpooled must refuse the store.
POOLING_WRITER_FEATURE = "token-pooling"
#: "metadata": segments may hold typed metadata whose field types settings.metadata_fields records;
#: a writer that does not know it would drop the metadata at compaction (FORMAT.md 8.2.2)
#: "keywords": segments may hold keyword postings; a writer that does not know it would drop them at
#: compaction, so every later reader would tokenize the text again (FORMAT.md 8.6)
KNOWN_WRITER_FEATURES: frozenset[str] = frozenset({"projection", POOLING_WRITER_FEATURE, "metadata", "keywords"})
# codec.kind values this version reads: "residual" (the scalar codec) and "pq"
KNOWN_CODEC_KINDS: frozenset[str] = frozenset({"residual", "pq"})

# Name grammar (FORMAT.md 4.1): what a manifest may name under segments/, and the codec path.
SEGMENT_NAME = re.compile(r"seg-([0-9]{6,18})\Z")
DELETES_NAME = re.compile(r"(seg-[0-9]{6,18})\.([0-9]{6,18})\.del\Z")
CODEC_PATH = "codec"
#: lodestore.Index's encoding buffer of the commit G it prepares (`segments/.spill-{pid}-{G}`): garbage once left behind.
SPILL_NAME = re.compile(r"\.spill-[0-9]{1,10}-([0-9]{1,18})\Z")
#: Size limits a reader checks before parsing (FORMAT.md 4.2).
MAX_MANIFEST_BYTES = 64 << 20
MAX_COUNT = 1 << 40  # documents or tokens of one segment


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
            name=_name(d["name"]), documents=_count(d["documents"]), tokens=_count(d["tokens"]),
            deletes=d.get("deletes"), deleted=_count(d.get("deleted", 0)),
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
        return cls(kind=str(d["kind"]), path=_name(d["path"]), dim=_count(d["dim"]), nbits=_count(d["nbits"]),
                   num_centroids=_count(d["num_centroids"]), pq_subspaces=None if m is None else _count(m))


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
        doc = parse_json(data, source)
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
        if not _strings(doc.get("reader_features", [])) or not _strings(doc.get("writer_features", [])):
            raise CorruptStoreError(f"{source}: feature lists are not lists of strings")
        unknown = set(doc.get("reader_features", [])) - KNOWN_READER_FEATURES
        if unknown:
            raise UnsupportedFormatError(
                f"{source}: store needs reader features {sorted(unknown)} unknown to this lodestore; upgrade it"
            )
        codec = doc.get("codec")
        if isinstance(codec, dict) and not (isinstance(codec.get("kind"), str) and codec["kind"] in KNOWN_CODEC_KINDS):
            raise UnsupportedFormatError(
                f"{source}: store uses codec {codec.get('kind')!r}, unknown to this lodestore "
                f"(it reads {sorted(KNOWN_CODEC_KINDS)}); upgrade lodestore to open this store"
            )
        try:
            if not isinstance(doc["segments"], list) or not isinstance(doc.get("settings") or {}, dict):
                raise TypeError("segments is not a list or settings not an object")
            if not isinstance(doc.get("encoder"), (dict, type(None))) or not isinstance(doc.get("codec"), (dict, type(None))):
                raise TypeError("codec and encoder are objects or null")
            manifest = cls(
                generation=_count(doc["generation"]), dim=_count(doc["dim"]), nbits=_count(doc["nbits"]),
                codec=CodecEntry.from_dict(doc["codec"]) if doc.get("codec") else None,
                segments=tuple(SegmentEntry.from_dict(s) for s in doc["segments"]),
                settings=dict(doc.get("settings") or {}), encoder=doc.get("encoder"),
                reader_features=tuple(doc.get("reader_features", [])),
                writer_features=tuple(doc.get("writer_features", [])), format_version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CorruptStoreError(f"{source}: malformed field ({e!r})") from None
        manifest.check_structure(source)
        return manifest

    def check_structure(self, source: str = MANIFEST_NAME) -> None:
        """The rules of FORMAT.md 5.1 and 4.1 that a reader checks: names, ranges, counts (CorruptStoreError)."""
        def bad(why: str) -> CorruptStoreError:
            return CorruptStoreError(f"{source}: {why}")

        pq = PQ_READER_FEATURE in self.reader_features
        if PQ_WIDE_READER_FEATURE in self.reader_features and not pq:
            raise bad(f"reader feature {PQ_WIDE_READER_FEATURE!r} without {PQ_READER_FEATURE!r}")
        subspaces = PQ_WIDE_SUBSPACES if PQ_WIDE_READER_FEATURE in self.reader_features else PQ_NARROW_SUBSPACES
        if not 1 <= self.dim <= 65536 or (self.nbits != 0 if pq else self.nbits not in (1, 2, 4) or self.dim * self.nbits % 8):
            raise bad(f"dim {self.dim} and nbits {self.nbits} are not a valid pair")
        c = self.codec
        if c is not None and (c.kind == "pq") != pq:
            raise bad(f"codec kind {c.kind!r} and reader features {list(self.reader_features)} disagree")
        if c is not None:
            if c.path != CODEC_PATH or c.dim != self.dim or c.nbits != self.nbits or not 1 <= c.num_centroids <= 65536:
                raise bad(f"codec entry {c} disagrees with the manifest or the format")
            if c.kind == "pq" and c.pq_subspaces in PQ_NARROW_SUBSPACES + PQ_WIDE_SUBSPACES \
                    and c.pq_subspaces not in subspaces:
                raise bad(f"a pq codec of {c.pq_subspaces} subspaces with reader features {list(self.reader_features)}: "
                          f"{PQ_WIDE_READER_FEATURE!r} goes exactly with {' or '.join(map(str, PQ_WIDE_SUBSPACES))}")
            if c.kind == "pq" and (c.pq_subspaces not in subspaces or self.dim % c.pq_subspaces or self.nbits):
                raise bad(f"pq codec with {c.pq_subspaces} subspaces does not fit dim {self.dim}")
            if c.kind == "residual" and c.pq_subspaces is not None:
                raise bad("a residual codec entry has pq_subspaces")
        elif self.segments:
            raise bad("segments are listed but no codec")
        self._check_settings(bad, pq, subspaces)
        names: set[str] = set()
        for e in self.segments:
            m = SEGMENT_NAME.match(e.name)
            if m is None or int(m.group(1)) > self.generation or e.name in names:
                raise bad(f"segment name {e.name!r} is not seg-NNNNNN of a generation up to {self.generation}, "
                          "or is listed twice")
            names.add(e.name)
            if not e.documents <= e.tokens or e.deleted > e.documents:
                raise bad(f"segment {e.name}: {e.documents} documents, {e.tokens} tokens, {e.deleted} deleted")
            if e.deletes is None:
                if e.deleted:
                    raise bad(f"segment {e.name}: {e.deleted} deleted but no deletion bitmap")
                continue
            d = DELETES_NAME.match(e.deletes) if isinstance(e.deletes, str) else None
            if d is None or d.group(1) != e.name or not int(m.group(1)) <= int(d.group(2)) <= self.generation:
                raise bad(f"segment {e.name}: deletion bitmap name {e.deletes!r} is not {e.name}.GGGGGG.del")

    def _check_settings(self, bad, pq: bool, subspaces: tuple[int, ...]) -> None:
        """The settings keys readers use (FORMAT.md 5.1): types and ranges; unknown keys are ignored."""
        st = self.settings

        def is_int(v) -> bool:
            return type(v) is int

        k = st.get("num_centroids")
        if k is not None and not (is_int(k) and 1 <= k <= 65536) or not is_int(st.get("seed", 0)):
            raise bad(f"settings num_centroids {k!r} / seed {st.get('seed')!r} are not valid")
        if st.get("codec", "scalar") != ("pq" if pq else "scalar") or pq and st.get("pq_subspaces") not in subspaces:
            raise bad(f"settings codec {st.get('codec')!r} ({st.get('pq_subspaces')!r} subspaces) disagrees with "
                      "the reader features")
        if "input_dim" in st or "projection" in self.writer_features:
            d = st.get("input_dim")
            if not (is_int(d) and self.dim < d <= 1 << 20) or st.get("reduction") not in ("pca", "random") \
                    or "projection" not in self.writer_features:
                raise bad(f"settings input_dim {d!r} / reduction {st.get('reduction')!r} do not describe a projection")
        if "pool_factor" in st or POOLING_WRITER_FEATURE in self.writer_features:
            f = st.get("pool_factor")
            if not (is_int(f) and 2 <= f <= 1 << 20) or POOLING_WRITER_FEATURE not in self.writer_features:
                raise bad(f"settings pool_factor {f!r} and writer features {list(self.writer_features)} do not "
                          "describe token pooling")
        if ("metadata_fields" in st) != ("metadata" in self.writer_features):
            raise bad("settings metadata_fields and the writer feature metadata do not come together")
        if "metadata_fields" in st:
            try:
                check_schema(st["metadata_fields"])
            except ValueError as e:
                raise bad(f"settings {e}") from None

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
    """Read and check the manifest of the store at `root` (a regular file, no symlink, at most MAX_MANIFEST_BYTES)."""
    path = StorePath(root) / MANIFEST_NAME
    try:
        data = path.read_bytes(MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise StoreError(f"{root}: not a lodestore store (no {MANIFEST_NAME})") from None
    except OSError as e:
        raise CorruptStoreError(f"{path}: unreadable ({e})") from None
    return Manifest.from_bytes(data, source=str(path))


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Commit point: atomically replace the manifest (FORMAT.md section 12, steps 4-7)."""
    atomic_replace(root / MANIFEST_NAME, manifest.to_bytes(), step="manifest")


def _count(v: Any) -> int:
    """A JSON integer in [0, MAX_COUNT] (not a bool, a float or a string)."""
    if type(v) is not int or not 0 <= v <= MAX_COUNT:
        raise ValueError(f"{v!r} is not an integer in [0, 2^40]")
    return v


def _name(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{v!r} is not a name")
    return v


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)
