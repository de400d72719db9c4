"""The library never loads the server's framework; `lodestore serve` refuses bad arguments before serving."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lodestore import cli

from .serving import REPO


def test_library_use_never_imports_the_server_framework(text_index_path: Path) -> None:
    code = f"""
import sys
import lodestore
from lodestore import Index, Client, Searcher, Store
from lodestore.cli import build_parser
build_parser()
with Index.open({str(text_index_path)!r}) as index:
    assert index.search("cells", k=2)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("starlette", "uvicorn", "httpx", "anyio", "playwright")
                or m.startswith("lodestore.server.") and m != "lodestore.server._config")  # the CLI reads Limits
assert not loaded, loaded
print("clean")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr


@pytest.mark.parametrize("argv, message", [
    (["serve", "/no/such/store"], "no such store directory"),
    (["serve", "{store}", "--api-key-file", "/no/such/keys"], "cannot read the API key file"),
    (["serve", "{store}", "--max-k", "0"], "max_k must be a positive number"),
    (["serve", "{store}", "--protect", "all", "--search-threads", "0"], "search_threads must be a positive integer"),
])
def test_serve_refuses_bad_arguments(vec_store_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                     message: str) -> None:
    pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[test,serve]'")
    assert cli.main([a.replace("{store}", str(vec_store_path)) for a in argv]) == 2
    assert message in capsys.readouterr().err
