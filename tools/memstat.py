"""Process memory and I/O counters from /proc (Linux), for benchmarks."""

from __future__ import annotations

import os


def status_mb() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile, VmHWM of this process in MB (from /proc/self/status)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024
    return out


def io_read_bytes() -> int:
    """Bytes this process caused to be read from storage (/proc/self/io read_bytes)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def evict(paths) -> int:
    """Drop the page cache of every file under the given paths (posix_fadvise DONTNEED). Returns files evicted."""
    n = 0
    for root in paths:
        for dirpath, _d, files in os.walk(root, followlinks=True):  # reused stores are symlinked (bench_scale)
            for name in files:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    n += 1
                finally:
                    os.close(fd)
    return n


def warm(paths) -> int:
    """Read every file under the given paths once, so they sit in the page cache (the "warm" rows).

    Done in the parent before a search child starts, so the child's RSS is untouched.
    Returns bytes read.
    """
    total = 0
    buf = bytearray(1 << 20)
    for root in paths:
        for dirpath, _d, files in os.walk(root, followlinks=True):  # reused stores are symlinked (bench_scale)
            for name in files:
                with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                    while n := f.readinto(buf):
                        total += n
    return total


def loadavg() -> float:
    return os.getloadavg()[0]
