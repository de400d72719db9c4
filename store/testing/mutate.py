"""CRC-correct mutations of a store directory, for the hostile-store fuzzer.

A mutation is a plain tuple (kind, target, position, value) so hypothesis can draw
and shrink it and tools/fuzz_store.py can draw it from a seeded generator:
  kind      one of KINDS
  target    index into the store's entries (files, or directories for some kinds)
  position  a float in [0, 1): where in the file or the JSON tree
  value     kind-specific: a byte, bytes, a JSON value, a special-file name, a size
Every byte mutation is followed by recomputing the CRCs the format puts in that
file (store/testing/hostile.py fix_crcs), so damage gets past the checksums and
reaches the structural checks; the manifest's body checksum is recomputed too.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from .hostile import crc, fix_crcs, fix_manifest

KINDS = ("flip", "truncate", "extend", "json", "deep-json", "special", "plant", "bomb", "name")
SPECIALS = ("fifo", "devzero", "link-outside-file", "link-outside-dir", "dir", "remove", "link-loop")
PLANTS = ("future-seg-link", "readers-link", "lock-link", "tmp-link", "codec-link", "lease-fifo", "lease-link",
          "del-link", "segments-link")
HOSTILE_NAMES = ("../outside/victim", "/tmp", "seg-000001/../../outside", "seg-999999", "..", "", "seg-1",
                 "seg-000001.000001.del", "codec/../../outside", "seg-000002.000009.del", 7, None)

Mutation = tuple[str, int, float, Any]


def entries(store: Path, *, dirs: bool = False) -> list[str]:
    """Sorted relative paths of the store's regular files (and directories when dirs=True), links not followed.

    Special files an earlier mutation made are left out: the harness itself never opens a FIFO.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(store):
        for name in filenames + (dirnames if dirs else []):
            p = os.path.join(dirpath, name)
            mode = os.lstat(p).st_mode
            if stat.S_ISREG(mode) or dirs and stat.S_ISDIR(mode):
                out.append(os.path.relpath(p, store))
    return sorted(out)


def _read_json(path: Path) -> Any:
    """The JSON in a regular file, or None (missing, special, not JSON)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def apply(store: Path, outside: Path, mutation: Mutation) -> str:
    """Apply one mutation; returns a short description (for reports)."""
    kind, target, pos, value = mutation
    if kind in ("special",):
        names = entries(store, dirs=True)
    else:
        names = entries(store)
    if kind == "plant":
        return _plant(store, outside, value)
    if kind == "name":
        return _hostile_name(store, target, value)
    if not names:
        return "nothing to mutate"
    rel = names[target % len(names)]
    path = store / rel
    if kind == "special":
        return _special(path, outside, value) + f" at {rel}"
    if path.is_dir() or path.is_symlink():
        return "skipped"
    data = path.read_bytes()
    if kind == "flip":
        i = int(pos * len(data)) if data else 0
        data = data[:i] + bytes([data[i] ^ (value or 1)]) + data[i + 1 :] if data else b"\x00"
    elif kind == "truncate":
        data = data[: int(pos * len(data))]
    elif kind == "extend":
        data = data + bytes(value)
    elif kind == "json":
        return _json(store, rel, pos, value)
    elif kind == "deep-json":
        if rel.endswith(".json"):
            path.write_bytes(b"[" * int(value) + b"]" * int(value))
            return f"deep JSON at {rel}"
        return "skipped"
    elif kind == "bomb":
        return _bomb(store, rel, int(value))
    path.write_bytes(fix_crcs(store, rel, data))
    return f"{kind} at {rel}"


def _json_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _json_paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _json_paths(v, prefix + (i,))
    return out


def _json(store: Path, rel: str, pos: float, value: Any) -> str:
    if not rel.endswith(".json"):
        return "skipped"
    path = store / rel
    doc = _read_json(path)
    paths = [p for p in _json_paths(doc) if p and p[0] != "checksum"]
    if not paths:
        return "skipped"
    where = paths[int(pos * len(paths)) % len(paths)]
    node = doc
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    path.write_bytes(fix_manifest(doc) if rel == "manifest.json" else json.dumps(doc).encode())
    return f"json {rel}:{list(where)} = {str(value)[:40]}"


def _special(path: Path, outside: Path, what: str) -> str:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    if what == "fifo":
        os.mkfifo(path)
    elif what == "devzero":
        path.symlink_to("/dev/zero")
    elif what == "link-outside-file":
        path.symlink_to(outside / "file.bin")
    elif what == "link-outside-dir":
        path.symlink_to(outside / "victim")
    elif what == "dir":
        path.mkdir()
    elif what == "link-loop":
        path.symlink_to(path.name)
    return what


def _plant(store: Path, outside: Path, what: str) -> str:
    seg = store / "segments"
    try:
        if what == "future-seg-link":
            (seg / "seg-000099").symlink_to(outside / "victim")
        elif what == "readers-link":
            _replace_with_link(store / "readers", outside / "victim")
        elif what == "lock-link":
            _replace_with_link(store / ".lock", outside / "created-by-lock")
        elif what == "tmp-link":
            _replace_with_link(store / "manifest.json.tmp", outside / "file.bin")
        elif what == "codec-link":
            _replace_with_link(store / "codec", outside / "victim")
        elif what == "segments-link":
            _replace_with_link(seg, outside / "victim")
        elif what == "lease-fifo":
            (store / "readers").mkdir(exist_ok=True)
            os.mkfifo(store / "readers" / "1-000000000000.lease")
        elif what == "lease-link":
            (store / "readers").mkdir(exist_ok=True)
            (store / "readers" / "1-000000000000.lease").symlink_to(outside / "file.bin")
        elif what == "del-link":
            (seg / "seg-000001.000050.del").symlink_to(outside / "file.bin")
    except (FileExistsError, FileNotFoundError, NotADirectoryError):
        return f"plant {what} skipped"
    return f"plant {what}"


def _replace_with_link(path: Path, target: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    path.symlink_to(target)


def _bomb(store: Path, rel: str, megabytes: int) -> str:
    parts = rel.split("/")
    if "c" not in parts or parts[-1].endswith(".del") or (len(parts) > 2 and parts[2] in ("codes", "residuals")):
        return "skipped"
    import zlib

    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    z = c.compress(bytes(megabytes << 20)) + c.flush()
    (store / rel).write_bytes(z + crc(z))
    return f"bomb {megabytes} MiB at {rel}"


def _hostile_name(store: Path, target: int, value: Any) -> str:
    path = store / "manifest.json"
    doc = _read_json(path)
    if not isinstance(doc, dict):
        return "skipped"
    segs = doc.get("segments")
    fields = [("codec", "path")] if isinstance(doc.get("codec"), dict) else []
    if isinstance(segs, list):
        fields += [(i, f) for i in range(len(segs)) if isinstance(segs[i], dict) for f in ("name", "deletes")]
    if not fields:
        return "skipped"
    owner, field = fields[target % len(fields)]
    (doc["codec"] if owner == "codec" else segs[owner])[field] = value
    path.write_bytes(fix_manifest(doc))
    return f"name {owner}.{field} = {value!r}"


def build_template(path: Path, seed: int = 0) -> Path:
    """The store the fuzzers mutate: dim 16, nbits 2, K 8; a segment with payloads, a second one, one deletion."""
    import numpy as np

    from .. import Store

    rng = np.random.default_rng(seed)
    docs = [rng.standard_normal((int(rng.integers(2, 9)), 16)).astype(np.float32) for _ in range(12)]
    with Store.create(path, dim=16, nbits=2, num_centroids=8, seed=seed) as s:
        s.add([f"a{i}" for i in range(6)], docs[:6], payloads=[f"text {i}".encode() for i in range(6)])
        s.add([f"b{i}" for i in range(6)], docs[6:])
        s.delete(["a1", "b2"])
    return path
