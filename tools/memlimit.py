"""Hold a process to a memory limit that counts the page cache (cgroup v1), and its reads to a
device rate (blkio), so a benchmark measures the store on the device rather than in RAM.

On these machines a cgroup v1 memory controller is mounted at /sys/fs/cgroup/memory: page-cache
pages a process reads are charged to its cgroup and evicted when the cgroup reaches its limit.
`MemoryLimit(bytes)` makes a child cgroup of the caller's own, sets its limit and moves a process
into it; `close()` moves the process back and removes the child. `unavailable()` says, in one
sentence, why a limit cannot be set here (no controller, not root, cgroup v2 only, ...), so a tool
can print it and a test can skip with it.

    with MemoryLimit(1 << 30) as lim:      # this process, from here on
        ...search...
        lim.stats()                        # usage, peak, cache and rss bytes, failcnt
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
BLKIO_ROOT = Path("/sys/fs/cgroup/blkio")
_names = itertools.count()


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path (relative to the controller's mount) from /proc/self/cgroup."""
    with open("/proc/self/cgroup", encoding="ascii") as f:
        for line in f:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path.lstrip("/")
    raise OSError(f"this process is in no cgroup v1 {controller} hierarchy")


def _controller_dir(root: Path, controller: str) -> Path:
    own = root / _own_cgroup(controller)
    return own if own.is_dir() else root  # inside a cgroup namespace the own path is the mount itself


def unavailable(controller: str = "memory") -> str | None:
    """None when a child cgroup of `controller` ("memory" or "blkio") can be made here, else why not."""
    root = MEMORY_ROOT if controller == "memory" else BLKIO_ROOT
    knob = "memory.limit_in_bytes" if controller == "memory" else "blkio.throttle.read_iops_device"
    if not (root / knob).exists():
        return f"no cgroup v1 {controller} controller at {root} (cgroup v2 only, or not mounted)"
    if os.geteuid() != 0:
        return f"setting a {controller} cgroup limit needs root (euid {os.geteuid()})"
    try:
        parent = _controller_dir(root, controller)
    except OSError as e:
        return str(e)
    if not os.access(parent, os.W_OK):
        return f"{parent} is not writable (a read-only cgroup mount?)"
    return None


def _parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    s = text.strip().upper().removesuffix("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if s and s[-1] in units:
        return int(float(s[:-1]) * units[s[-1]])
    return int(s)


class MemoryLimit:
    """A child memory cgroup with `limit` bytes (page cache included) holding process `pid`.

    What the process held before it moved in stays charged where it was (this kernel refuses
    memory.move_charge_at_immigrate): only what it allocates or reads from then on counts.
    """

    def __init__(self, limit: int | str, pid: int | None = None) -> None:
        why = unavailable("memory")
        if why is not None:
            raise OSError(f"cannot set a memory limit: {why}")
        self.limit = _parse_size(limit)
        if self.limit < 16 << 20:
            raise ValueError(f"memory limit {self.limit} bytes is below 16 MiB: the process could not run")
        self.pid = os.getpid() if pid is None else pid
        self.parent = _controller_dir(MEMORY_ROOT, "memory")
        self.path = self.parent / f"lodestore-{os.getpid()}-{next(_names)}"
        self.path.mkdir()
        try:
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
            swap = self.path / "memory.swappiness"
            if swap.exists():
                swap.write_text("0")  # anonymous memory is not swapped out to stay under: the limit bites the cache
            (self.path / "cgroup.procs").write_text(str(self.pid))
        except BaseException:
            self.path.rmdir()
            raise

    def set_limit(self, limit: int | str) -> None:
        """Change the limit of the running group (lowering it reclaims page cache down to it)."""
        limit = _parse_size(limit)
        (self.path / "memory.limit_in_bytes").write_text(str(limit))
        self.limit = limit

    def _read(self, name: str) -> int:
        return int((self.path / name).read_text())

    def stats(self) -> dict[str, int]:
        """Bytes charged now and at peak, page cache and anonymous memory, and how often the limit hit."""
        stat = {}
        for line in (self.path / "memory.stat").read_text().splitlines():
            key, value = line.split()
            stat[key] = int(value)
        return {"limit": self.limit, "usage": self._read("memory.usage_in_bytes"),
                "peak": self._read("memory.max_usage_in_bytes"), "cache": stat.get("cache", 0),
                "rss": stat.get("rss", 0), "failcnt": self._read("memory.failcnt")}

    def close(self) -> None:
        """Move every process of the child back to the parent and remove the child."""
        _release(self.path, self.parent)

    def __enter__(self) -> "MemoryLimit":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _release(child: Path, parent: Path) -> None:
    """Move every process of a child cgroup back to its parent, then remove the child."""
    if not child.exists():
        return
    for pid in (child / "cgroup.procs").read_text().split():
        try:
            (parent / "cgroup.procs").write_text(pid)
        except OSError:
            pass  # the process has exited meanwhile
    _rmdir(child)


def _rmdir(path: Path, tries: int = 50) -> bool:
    """Remove an empty child cgroup; exiting threads can keep it busy for a few milliseconds."""
    for _ in range(tries):
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            time.sleep(0.02)
    return False


def remove_leftovers(pid: int) -> int:
    """Remove the empty child cgroups a process `pid` made and could not remove (it was killed, say
    by the OOM killer at its limit). Returns how many were removed."""
    n = 0
    for root, controller in ((MEMORY_ROOT, "memory"), (BLKIO_ROOT, "blkio")):
        if unavailable(controller) is None:
            n += sum(_rmdir(p, tries=5) for p in _controller_dir(root, controller).glob(f"lodestore-{pid}-*"))
    return n


def device_of(path: str | os.PathLike) -> str:
    """'MAJOR:MINOR' of the block device holding `path` (for blkio throttles)."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    part = Path(f"/sys/dev/block/{major}:{minor}")
    if (part / "partition").exists():  # throttles apply to the whole disk, not a partition
        return (part.resolve().parent / "dev").read_text().strip()
    return f"{major}:{minor}"


class ReadThrottle:
    """A child blkio cgroup holding process `pid` to `iops` reads/s and `bps` bytes/s on `path`'s device
    (a cloud SSD's rate, say 3,000 IOPS and 125 MB/s). Direct reads are throttled; the page cache is not."""

    def __init__(self, path: str | os.PathLike, iops: int | None = None, bps: int | None = None,
                 pid: int | None = None) -> None:
        why = unavailable("blkio")
        if why is not None:
            raise OSError(f"cannot throttle reads: {why}")
        self.pid = os.getpid() if pid is None else pid
        self.parent = _controller_dir(BLKIO_ROOT, "blkio")
        self.path = self.parent / f"lodestore-{os.getpid()}-{next(_names)}"
        self.path.mkdir()
        dev = device_of(path)
        try:
            if iops:
                (self.path / "blkio.throttle.read_iops_device").write_text(f"{dev} {int(iops)}")
            if bps:
                (self.path / "blkio.throttle.read_bps_device").write_text(f"{dev} {_parse_size(bps)}")
            (self.path / "cgroup.procs").write_text(str(self.pid))
        except BaseException:
            self.path.rmdir()
            raise

    def close(self) -> None:
        """Move every process of the child back to the parent and remove the child."""
        _release(self.path, self.parent)

    def __enter__(self) -> "ReadThrottle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
