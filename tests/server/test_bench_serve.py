"""tools/bench_serve.py runs end to end on a tiny store: a table row per run, zero errors, the overhead line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[test,serve]'")

from tools import bench_serve  # noqa: E402


def test_bench_serve_short_run(vec_store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    rc = bench_serve.main(["--store", str(vec_store_path), "--clients", "2", "--workers", "1", "--seconds", "30",
                           "--requests", "12", "--write-every", "0.2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["errors"] == 0 and run["searches"] == 12 and run["workers"] == 1 and run["clients"] == 2
    assert run["rss_idle_mb"] > 0 and set(run["search"]) == {"p50", "p95", "p99"}
    assert "| 1 | 2 |" in printed and "HTTP overhead at 1 client" in printed
    assert result["overhead"]["errors"] == 0
