"""Helpers of the server tests: the app in-process, and `lodestore serve` in a subprocess.

`app_client(path, **config)` runs the app in-process (Starlette's TestClient, with
its startup and shutdown); `start_server(path, *args)` runs `lodestore serve` in a
subprocess on a free loopback port, for the tests that kill it, use several
workers, or drive a browser.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tools" / "data" / "scifact-sample"
VEC_DOCS = 120
VEC_DIM = 32
TEXT_DOCS = 12


@dataclass
class VectorCorpus:
    """The synthetic documents of the vector store (and 8 more, never added, for tests that add)."""

    ids: list[str]
    docs: list[np.ndarray]


@contextmanager
def app_client(path: Path, **config: Any) -> Iterator[Any]:
    """The app over `path` in-process, started and stopped around the block."""
    from starlette.testclient import TestClient

    from lodestore.server import Limits, ServeConfig, create_app

    limits = config.pop("limits", None) or Limits()
    with TestClient(create_app(ServeConfig(str(path), limits, **config)), raise_server_exceptions=False) as client:
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A `lodestore serve` subprocess (its own process group, so a kill reaches every worker)."""

    proc: subprocess.Popen
    url: str
    log: Path
    args: list[str] = field(default_factory=list)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready after {timeout} s:\n{log.read_text(errors='replace')}")


@contextmanager
def start_server(path: Path, *args: str, log_dir: Path) -> Iterator[Server]:
    """`python -m lodestore.cli serve path --port <free> args...`; stopped (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = log_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "lodestore.cli", "serve", str(path), "--port", str(port), "--log-level", "warning",
           *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
    server = Server(proc, url, log, list(args))
    try:
        wait_ready(url, proc, log)
        yield server
    finally:
        proc = server.proc  # the process now serving: restart() may have replaced the first one
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                server.kill()


def restart(server: Server, path: Path) -> subprocess.Popen:
    """Start `lodestore serve` again on the same port and store (after a kill); wait until it is ready."""
    port = server.url.rsplit(":", 1)[1]
    cmd = [sys.executable, "-m", "lodestore.cli", "serve", str(path), "--port", port, "--log-level", "warning",
           *server.args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(server.log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
    server.proc = proc
    wait_ready(server.url, proc, server.log)
    return proc
