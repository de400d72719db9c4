"""Hostile-store testing: run a case in a limited child process, forge CRC-correct damage, detect escapes.

Used by tests/store/test_hostile.py, tests/store/test_fuzz_store.py and tools/fuzz_store.py.
Every case runs in a forked child with an address-space limit (RLIMIT_AS) and a
wall-clock limit, so a regression that crashes (a signal), hangs or exhausts memory
is reported as such instead of killing the test run. A *sandbox* holds the store
and, beside it, an `outside/` tree that damage may point symlinks at; `snapshot`
lets a caller check that nothing outside the store was read-written or created.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import resource
import select
import signal
import stat
import struct
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import google_crc32c

from .._errors import StoreError

GIB = 1 << 30


@dataclass(frozen=True)
class Outcome:
    """How a child case ended: ok | refused (a StoreError) | crash (any other exception) | signal | hang | oom."""

    kind: str
    detail: str = ""

    @property
    def acceptable(self) -> bool:
        return self.kind in ("ok", "refused")


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def run_limited(fn: Callable[..., object], *args, timeout: float = 30.0, address_space: int = 2 * GIB) -> Outcome:
    """Run fn(*args) in a forked child allowed `address_space` bytes beyond what it starts with and `timeout` s."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(r)
            limit = _vm_size() + address_space
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            try:
                fn(*args)
                result = ("ok", "")
            except StoreError as e:
                result = ("refused", f"{type(e).__name__}: {e}")
            except MemoryError:
                result = ("oom", traceback.format_exc())
            except BaseException as e:  # noqa: BLE001 - the point is to see any other exception
                result = ("crash", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            os.write(w, json.dumps(result).encode()[:60000])
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(w)
    data, deadline = b"", time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return Outcome("hang", f"no result after {timeout:.0f} s")
            ready, _, _ = select.select([r], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(r)
    if os.WIFSIGNALED(status):
        return Outcome("signal", f"killed by signal {os.WTERMSIG(status)}")
    try:
        kind, detail = json.loads(data)
    except ValueError:
        return Outcome("crash", f"child exited {os.waitstatus_to_exitcode(status)} without a result")
    return Outcome(kind, detail)


# --------------------------------------------------------------------------- sandbox and escapes


def make_outside(sandbox: Path) -> Path:
    """`sandbox/outside`: files and a directory that damage points symlinks at; nothing may change them."""
    out = sandbox / "outside"
    (out / "victim" / "seg-000001").mkdir(parents=True)
    (out / "victim" / "keep.txt").write_bytes(b"outside the store\n")
    (out / "victim" / "seg-000001" / "zarr.json").write_bytes(b"{}")
    (out / "file.bin").write_bytes(bytes(range(256)) * 4)
    return out


def snapshot(sandbox: Path, store_name: str = "store") -> dict[str, tuple[str, str]]:
    """Every entry under `sandbox` but the store: kind and content digest (a symlink is not followed)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(sandbox):
        rel = os.path.relpath(dirpath, sandbox)
        if rel == store_name or rel.startswith(store_name + os.sep):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            key = os.path.relpath(p, sandbox)
            if key == store_name:
                continue
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                snap[key] = ("link", os.readlink(p))
            elif stat.S_ISDIR(mode):
                snap[key] = ("dir", "")
            elif not stat.S_ISREG(mode):  # never opened: a FIFO would block the harness
                snap[key] = ("special", oct(mode))
            else:
                with open(p, "rb") as f:
                    snap[key] = ("file", hashlib.sha256(f.read()).hexdigest())
    return snap


# --------------------------------------------------------------------------- CRC-correct forgery


def crc(data: bytes) -> bytes:
    return google_crc32c.value(data).to_bytes(4, "little")


def fix_manifest(doc: dict) -> bytes:
    """Manifest bytes with the body checksum recomputed (FORMAT.md 5.3)."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return (json.dumps(dict(body, checksum=f"crc32c:{google_crc32c.value(canonical):08x}"), indent=2,
                       sort_keys=True) + "\n").encode()


def write_manifest_doc(root: Path, doc: dict) -> None:
    (root / "manifest.json").write_bytes(fix_manifest(doc))


def gzip_chunk(payload: bytes) -> bytes:
    """A small-array chunk file: gzip member + CRC32C of it."""
    z = gzip.compress(payload, 1)
    return z + crc(z)


def shard_params(array_dir: Path) -> tuple[int, int] | None:
    """(inner chunks per shard P, chunk_bytes) of a sharded array, from its zarr.json (None if unreadable)."""
    try:
        if not stat.S_ISREG(os.lstat(array_dir / "zarr.json").st_mode):
            return None
        meta = json.loads((array_dir / "zarr.json").read_bytes())
        cfg = meta["codecs"][0]["configuration"]
        rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        inner = int(cfg["chunk_shape"][0])
        row = 1
        for d in meta["shape"][1:]:
            row *= int(d)
        item = {"uint16": 2, "uint8": 1}.get(meta["data_type"], 1)
        return rows // inner, inner * row * item
    except Exception:  # noqa: BLE001 - damaged metadata: no shard layout to fix
        return None


def fix_crcs(root: Path, rel: str, data: bytes) -> bytes:
    """`data` meant for file `rel` of the store, with every CRC the format puts in such a file recomputed."""
    parts = rel.split("/")
    if rel == "manifest.json":
        try:
            return fix_manifest(json.loads(data))
        except Exception:  # noqa: BLE001 - not JSON any more: leave it
            return data
    if parts[-1].endswith(".del") or "c" in parts[:-1]:
        if parts[0] == "segments" and len(parts) > 2 and parts[2] in ("codes", "residuals"):
            return _fix_shard(root / parts[0] / parts[1] / parts[2], data)
        return data[:-4] + crc(data[:-4]) if len(data) >= 4 else data
    return data


def _fix_shard(array_dir: Path, data: bytes) -> bytes:
    params = shard_params(array_dir)
    if params is None or len(data) < 16 * params[0] + 4:
        return data
    p, chunk_bytes = params
    buf = bytearray(data)
    index_at = len(buf) - 16 * p - 4
    for k in range(p):
        off, n = struct.unpack_from("<QQ", buf, index_at + 16 * k)
        if n == chunk_bytes + 4 and off + n <= index_at:
            buf[off + chunk_bytes : off + n] = crc(bytes(buf[off : off + chunk_bytes]))
    buf[-4:] = crc(bytes(buf[index_at:-4]))
    return bytes(buf)


def exercise(store_path: str, write: bool = True) -> None:
    """What a hostile store must survive: open, list ids, get, payloads, inverted lists, verify; then a writer's
    open (garbage collection) and one delete. Raises only what the store raises."""
    from .. import Store

    with Store.open(store_path) as s:
        ids = s.ids()
        for i in ids[:6]:
            s.get(i)
        s.payloads(ids[:3])
        for seg in s.open_segments():
            try:
                seg.ivf()
                seg.ids()
            finally:
                seg.close()
        s.verify()
        s.stats()
    if write:
        with Store.open(store_path, writable=True) as s:
            ids = s.ids()
            if ids:
                s.delete(ids[:1])
