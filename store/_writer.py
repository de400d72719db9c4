"""The three kinds of commit (FORMAT.md section 12): add a segment, delete documents, compact.

Each writes its new files under names carrying its generation G = g + 1 (invariant 4),
fsyncs them (steps 1-3, invariant 2), then hands the new manifest to
store/_commit.py's `commit`; on any failure before the rename `roll_back` removes what
it wrote. `Store` (store/_store.py) checks its arguments and calls these.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from . import _drift
from ._commit import CODEC_DIR, PROJECTION_DIR, SEGMENTS_DIR, commit, roll_back
from ._compact import common_tokenizer, copy_documents, far_tokens_estimate
from ._deletes import encode_deletes
from ._errors import StoreError
from ._fs import failpoint, fsync_dir, fsync_tree, write_durable
from ._ingest import DocSource
from ._keywords import KEYWORDS_FEATURE
from ._manifest import Manifest, SegmentEntry
from ._metadata import METADATA_FEATURE, SCHEMA_KEY
from ._projection import project
from ._readahead import read_ahead
from ._safefs import StorePath
from ._segment import SegmentWriter
from ._training import CodecState, train_codec_state, write_codec_state

if TYPE_CHECKING:
    from ._store import Store


def add_source(store: "Store", source: DocSource, replaced: list[str], *, progress: bool) -> int:
    """Encode `source` into one new segment, delete the live documents `replaced` in the same commit.

    The first add also trains and writes the codec state (invariant 5). Returns the new generation.
    """
    m = store.manifest
    new_codec = m.codec is None
    if new_codec:
        projection, codec, limit = train_codec_state(m.settings, dim=store.dim, input_dim=store.input_dim,
                                                     nbits=store.nbits, source=source)
    else:
        projection, codec, limit = store.projection, store.codec, store._drift_threshold()
    generation = m.generation + 1
    name = f"seg-{generation:06d}"
    seg_path = StorePath(store.root) / SEGMENTS_DIR / name  # made new, never through a symlink (SegmentWriter)
    codec_path = StorePath(store.root) / CODEC_DIR
    projection_path = StorePath(store.root) / PROJECTION_DIR
    written: list[str] = []
    try:
        if new_codec:
            if projection is not None:
                projection_path.mkdir()  # new real directories: zarr never writes through a planted link
            codec_path.mkdir()
            write_codec_state(codec_path, codec, limit, projection_path, projection, m.settings.get("reduction"))
            failpoint("add.codec_written")
        payloads, metadata, keywords = source.payloads, source.metadata, source.keywords
        writer = SegmentWriter(seg_path, codec, source.n_docs, source.n_tokens, payloads=payloads is not None,
                               metadata=metadata is not None, keywords=None if keywords is None else keywords.tokenizer)
        bar = _progress(progress, source.n_tokens, f"encoding {name}")
        done = far = 0
        with closing(read_ahead(source.batches())) as batches:  # the next batch is read while this one encodes
            for batch_ids, doclens, tokens in batches:
                if projection is not None:
                    tokens = project(tokens, projection)
                codes, residuals = codec.encode(tokens)
                far += _drift.count_far(codec.centroids, tokens, codes, limit)
                part = None if payloads is None else payloads[done : done + len(batch_ids)]
                batch = np.arange(done, done + len(batch_ids))
                meta = None if metadata is None else metadata.take(batch)
                postings = None if keywords is None else keywords.take(batch)
                writer.append(batch_ids, doclens, codes, residuals, part, meta, postings)
                done += len(batch_ids)
                bar.update(len(tokens))
                failpoint("add.batch_written")
        bar.close()
        if limit is not None:
            writer.attrs[_drift.FAR_ATTR] = far
        writer.finish()
        failpoint("add.segment_written")
        fsync_tree(seg_path)
        if new_codec:
            fsync_tree(codec_path)
            if projection is not None:
                fsync_tree(projection_path)
        entries = write_deletes(store, generation, replaced, written) if replaced else list(m.segments)
        fsync_dir(store.root / SEGMENTS_DIR)
        fsync_dir(store.root)
        failpoint("add.before_commit")
        entries.append(SegmentEntry(name=name, documents=source.n_docs, tokens=source.n_tokens))
        codec_entry = m.codec or codec.manifest_entry(CODEC_DIR)
        manifest = replace(m, generation=generation, codec=codec_entry, segments=tuple(entries))
        if keywords is not None:
            manifest = with_writer_feature(manifest, KEYWORDS_FEATURE)
        commit(store, with_metadata_fields(manifest, source.metadata_schema))
    except BaseException as e:
        trees = [f"{SEGMENTS_DIR}/{name}"] + ([CODEC_DIR, PROJECTION_DIR] if new_codec else [])
        roll_back(store, e, "add", generation, trees=trees, segment_files=written)
        raise
    store._codec, store._projection = codec, projection
    return generation


def adopt_codec(store: "Store", state: CodecState) -> int:
    """Commit a codec trained elsewhere into a store that has none yet, with no segment. Returns the generation.

    A sharded store's shared codec (lodestore/sharded/): trained once on the whole
    first add and committed into every shard before any shard's first segment, so
    every shard encodes a token identically. Steps as for an add's codec/ (and projection/).
    """
    m = store.manifest
    if m.codec is not None:
        raise StoreError(f"{store.root}: the store has a codec already; a codec is set once")
    c, kind = state.codec, m.settings.get("codec", "scalar")
    want = (store.input_dim, store.dim) if store.input_dim != store.dim else None
    got = None if state.projection is None else state.projection.shape
    if (c.name, c.dim, c.manifest_nbits, got) != (kind, store.dim, store.nbits, want) or \
            getattr(c, "subspaces", None) != m.settings.get("pq_subspaces"):
        raise ValueError(f"{store.root}: codec {c.name} dim {c.dim} (projection {got}) does not fit this store "
                         f"({kind}, dim {store.dim}, nbits {store.nbits}, projection {want})")
    generation = m.generation + 1
    codec_path = StorePath(store.root) / CODEC_DIR
    projection_path = StorePath(store.root) / PROJECTION_DIR
    try:
        if state.projection is not None:
            projection_path.mkdir()
        codec_path.mkdir()
        write_codec_state(codec_path, state.codec, state.limit, projection_path, state.projection,
                          m.settings.get("reduction"))
        fsync_tree(codec_path)
        if state.projection is not None:
            fsync_tree(projection_path)
        fsync_dir(store.root)
        commit(store, replace(m, generation=generation, codec=state.codec.manifest_entry(CODEC_DIR)))
    except BaseException as e:
        roll_back(store, e, "adopt codec", generation, trees=[CODEC_DIR, PROJECTION_DIR])
        raise
    store._codec, store._projection = state.codec, state.projection
    return generation


def delete(store: "Store", ids: list[str]) -> int:
    """Commit new bitmaps marking the live documents `ids` deleted. Returns the new generation."""
    m = store.manifest
    generation = m.generation + 1
    written: list[str] = []
    try:
        entries = write_deletes(store, generation, ids, written)
        fsync_dir(store.root / SEGMENTS_DIR)
        failpoint("delete.before_commit")
        commit(store, replace(m, generation=generation, segments=tuple(entries)))
    except BaseException as e:
        roll_back(store, e, "delete", generation, segment_files=written)
        raise
    return generation


def write_deletes(store: "Store", generation: int, ids: list[str], written: list[str]) -> list[SegmentEntry]:
    """Write (and fsync) the bitmaps of commit `generation` deleting live `ids`; the new segment entries.

    Each file name is appended to `written` before its write, so a failed commit can remove it.
    """
    index = store._ids_index()
    masks = {si: store.deleted(si).copy() for si in {index[i][0] for i in ids}}
    for i in ids:
        si, local = index[i]
        masks[si][local] = True
    entries = list(store.manifest.segments)
    for si, mask in masks.items():
        fname = f"{entries[si].name}.{generation:06d}.del"
        written.append(fname)  # before the write: a failed fsync leaves the file behind
        try:
            write_durable(StorePath(store.root) / SEGMENTS_DIR / fname, encode_deletes(mask))
        except FileExistsError:  # the exclusive create failed: the file there is not this commit's
            written.pop()
            raise
        entries[si] = replace(entries[si], deletes=fname, deleted=int(mask.sum()))
    return entries


def compact(store: "Store") -> int:
    """Copy every live document into one new segment seg-{G} and commit it alone. Returns the new generation."""
    m = store.manifest
    generation = m.generation + 1
    name = f"seg-{generation:06d}"
    seg_path = StorePath(store.root) / SEGMENTS_DIR / name
    store.segments  # opened (and checked against the manifest) before masks sized by its counts are used
    keep = [np.flatnonzero(~store.deleted(si)) for si in range(len(m.segments))]
    n_docs = sum(len(k) for k in keep)
    n_tokens = sum(int(np.diff(seg.doc_offsets)[k].sum()) for seg, k in zip(store.segments, keep))
    try:
        entries: tuple[SegmentEntry, ...] = ()
        if n_docs:  # all deleted: the store keeps its codec and has no segment
            with_payloads = any(seg.has_payloads for seg, k in zip(store.segments, keep) if len(k))
            with_metadata = any(seg.has_metadata for seg, k in zip(store.segments, keep) if len(k))
            tokenizer = common_tokenizer([seg for seg, k in zip(store.segments, keep) if len(k)])
            writer = SegmentWriter(seg_path, store.codec, n_docs, n_tokens, payloads=with_payloads,
                                   metadata=with_metadata, keywords=tokenizer)
            drift_parts = []
            for e, seg, k in zip(m.segments, store.segments, keep):
                if len(k):
                    copy_documents(seg, k, seg.ids(), writer)
                    live_tokens = int(np.diff(seg.doc_offsets)[k].sum())
                    drift_parts.append((_drift.segment_far_tokens(seg.path), e.tokens, live_tokens))
                    failpoint("compact.batch_written")
            far = far_tokens_estimate(drift_parts)
            if far is not None:
                writer.attrs[_drift.FAR_ATTR] = far
            writer.finish()
            failpoint("compact.segment_written")
            fsync_tree(seg_path)
            fsync_dir(store.root / SEGMENTS_DIR)
            fsync_dir(store.root)
            entries = (SegmentEntry(name=name, documents=n_docs, tokens=n_tokens),)
            if tokenizer is not None:
                m = with_writer_feature(m, KEYWORDS_FEATURE)
        failpoint("compact.before_commit")
        commit(store, replace(m, generation=generation, segments=entries))
    except BaseException as e:
        roll_back(store, e, "compact", generation, trees=[f"{SEGMENTS_DIR}/{name}"])
        raise
    return generation


def with_metadata_fields(m: Manifest, fields: dict[str, str] | None) -> Manifest:
    """The manifest with the metadata field types `fields` (and the writer feature metadata); as is for None."""
    if fields is None:
        return m
    return replace(with_writer_feature(m, METADATA_FEATURE), settings={**m.settings, SCHEMA_KEY: dict(fields)})


def with_writer_feature(m: Manifest, feature: str) -> Manifest:
    """The manifest listing writer feature `feature` (once)."""
    return m if feature in m.writer_features else replace(m, writer_features=m.writer_features + (feature,))


def _progress(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tok", unit_scale=True, disable=not enabled)
