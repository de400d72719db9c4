"""The layering rule of DESIGN.md: `store` (the on-disk format) never depends on `engine`,
and importing it stays light (no torch, no onnxruntime)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "store"
FORBIDDEN_AT_IMPORT = ("torch", "onnxruntime", "engine", "lodestore")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every absolute module name an import statement in `path` names, with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
            "import_module", "__import__",
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _store_sources() -> list[Path]:
    files = sorted(STORE.rglob("*.py"))
    assert files, f"no sources found under {STORE}"
    return files


@pytest.mark.parametrize("path", _store_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_store_never_imports_engine(path: Path) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for line, name in _imported_modules(path)
        if name.split(".")[0] in ("engine", "lodestore")
    ]
    assert not bad, "store/ must not import engine (or lodestore, which re-exports it):\n" + "\n".join(bad)


def test_import_checker_sees_imports(tmp_path: Path) -> None:
    """The AST walk above finds every spelling of an import (so the rule above can fail)."""
    src = tmp_path / "m.py"
    src.write_text(
        "import engine\nfrom engine.search import x\nimport os, engine.prefetch as p\n"
        "def f():\n    import engine\n    importlib.import_module('engine.x')\nfrom . import sibling\n"
    )
    names = [n for _, n in _imported_modules(src)]
    assert names.count("engine") == 2
    assert {"engine.search", "engine.prefetch", "engine.x", "os"} <= set(names)
    assert "sibling" not in names  # relative imports stay inside the package


def test_import_store_is_light() -> None:
    """`import store` in a fresh interpreter loads neither torch, onnxruntime nor engine."""
    code = (
        "import json, sys\n"
        "import store\n"
        "s = store.Store\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(FORBIDDEN_AT_IMPORT)!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`import store` pulled in {loaded}"
