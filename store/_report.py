"""What `Store.stats` and `Store.verify` report: sizes and parameters, and every checksum checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _drift
from ._commit import CODEC_DIR, PROJECTION_DIR, SEGMENTS_DIR
from ._deletes import read_deletes
from ._errors import StoreError
from ._leases import READERS_DIR
from ._manifest import read_manifest
from ._safefs import StorePath, tree_bytes
from ._metadata import SCHEMA_KEY
from ._segment import SegmentReader, segment_disk_usage
from ._structure import read_checked_codec
from ._smallarray import verify_small
from .codecs import settings_codec, verify_codec

if TYPE_CHECKING:
    from ._store import Store


@dataclass
class VerifyReport:
    """What `Store.verify` checked: every chunk of every array, the manifest, the bitmaps."""

    checked: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        head = f"{self.checked} chunks checked, {len(self.failures)} failures"
        return "\n".join([head] + [f"  CORRUPT {f}" for f in self.failures])


def stats(store: "Store") -> dict[str, Any]:
    """Sizes and parameters: documents, tokens, segments, bytes on disk, bytes per token, per-array sizes."""
    m, root = store.manifest, store.root
    arrays: dict[str, int] = {}
    for s in m.segments:
        for name, size in segment_disk_usage(root, s.name).items():
            arrays[name] = arrays.get(name, 0) + size
    arrays["codec"] = tree_bytes(root, CODEC_DIR)
    total = tree_bytes(root) - tree_bytes(root, READERS_DIR)  # not the readers' own lease files
    tokens = m.tokens
    kind, pq_subspaces = settings_codec(m.settings)
    token_data = sum(arrays.get(k, 0) for k in ("codes", "residuals", "doc_offsets", "id_offsets", "id_bytes"))
    drift = _drift.summarize(
        [(s.name, s.tokens, _drift.segment_far_tokens(StorePath(root) / SEGMENTS_DIR / s.name)) for s in m.segments],
        store._drift_threshold(),
    )
    return {
        "path": str(root),
        "format_version": m.format_version,
        "generation": m.generation,
        "documents": m.documents,
        "deleted": sum(s.deleted for s in m.segments),
        "tokens": tokens,
        "segments": len(m.segments),
        "dim": m.dim,
        "input_dim": store.input_dim,
        "reduction": m.settings.get("reduction") if store.input_dim != m.dim else None,
        "pool_factor": store.pool_factor,
        "nbits": m.nbits,
        "codec": kind,
        "pq_subspaces": pq_subspaces,
        "residual_bytes_per_token": store.codec.residual_bytes if m.codec else None,
        "centroids": m.codec.num_centroids if m.codec else 0,
        "bytes_on_disk": total,
        "bytes_per_token": total / tokens if tokens else 0.0,
        "token_bytes_per_token": token_data / tokens if tokens else 0.0,
        "array_bytes": arrays,
        "drift": drift,
    }


def verify(store: "Store") -> VerifyReport:
    """Check every checksum in the store: manifest body, codec, every chunk of every segment, bitmaps."""
    report = VerifyReport()
    root, manifest = store.root, store.manifest
    try:
        read_manifest(root)
        report.checked += 1
    except StoreError as e:
        report.failures.append(str(e))
        return report
    if manifest.codec is not None:
        c, f = verify_codec(StorePath(root) / manifest.codec.path)
        report.checked += c
        report.failures += f
        if not f:  # the checksums hold: do the arrays also fit the manifest (FORMAT.md 11.1)?
            try:
                read_checked_codec(root, manifest.codec, nbits=store.nbits, dim=store.dim)
            except StoreError as e:
                report.failures.append(str(e))
        if store.input_dim != store.dim:
            c, f = verify_small(StorePath(root) / PROJECTION_DIR / "matrix")
            report.checked += c
            report.failures += f
    for entry in manifest.segments:
        try:
            seg = SegmentReader.open_entry(root, entry, manifest.codec, manifest.settings.get(SCHEMA_KEY))
        except StoreError as e:
            report.failures.append(str(e))
            continue
        try:
            c, f = seg.verify()
            report.checked += c
            report.failures += f
            if seg.n_docs != entry.documents or seg.n_tokens != entry.tokens:
                report.failures.append(f"{seg.path}: size disagrees with the manifest")
        finally:
            seg.close()
        if entry.deletes:
            report.checked += 1
            try:
                read_deletes(root, entry)
            except StoreError as e:
                report.failures.append(str(e))
    return report

