"""The layering rules of DESIGN.md and ARCHITECTURE.md: one installed namespace (`lodestore`);
`lodestore.store` (the on-disk format) never depends on the engine or the text layer, and
importing it stays light (no torch, no onnxruntime); `lodestore.engine` reads the store only
through `lodestore.store.__all__`."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "store"
ENGINE = ROOT / "engine"
FORBIDDEN_AT_IMPORT = ("torch", "onnxruntime", "lodestore.engine", "lodestore.index", "lodestore.cli")
#: what store/ may import from the lodestore namespace: itself, and the neutral ctypes loader.
STORE_MAY_IMPORT = ("lodestore.store", "lodestore._cabi")


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


def _sources(folder: Path) -> list[Path]:
    files = sorted(folder.rglob("*.py"))
    assert files, f"no sources found under {folder}"
    return files


@pytest.mark.parametrize("path", _sources(STORE), ids=lambda p: str(p.relative_to(ROOT)))
def test_store_never_imports_engine(path: Path) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for line, name in _imported_modules(path)
        if name.split(".")[0] in ("engine", "store")
        or (name.split(".")[0] == "lodestore" and not name.startswith(STORE_MAY_IMPORT))
    ]
    assert not bad, "store/ imports only itself and lodestore._cabi from lodestore:\n" + "\n".join(bad)


def _public_store_names() -> set[str]:
    tree = ast.parse((STORE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("store/__init__.py has no __all__")


@pytest.mark.parametrize("path", _sources(ENGINE), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_uses_only_the_public_store_api(path: Path) -> None:
    """engine/ imports `lodestore.store` and names in its __all__, never a private module of it."""
    public = _public_store_names()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("lodestore.store."):
                bad.append(f"{node.lineno}: from {node.module} import ...")
            elif node.module == "lodestore.store":
                bad += [f"{node.lineno}: {a.name} is not in lodestore.store.__all__" for a in node.names
                        if a.name not in public]
            elif node.module.split(".")[0] in ("store", "engine"):
                bad.append(f"{node.lineno}: from {node.module} (not under the lodestore namespace)")
        elif isinstance(node, ast.Import):
            bad += [f"{node.lineno}: import {a.name}" for a in node.names
                    if a.name.startswith("lodestore.store.") or a.name.split(".")[0] in ("store", "engine")]
    assert not bad, f"{path.relative_to(ROOT)} reaches past lodestore.store's public API:\n" + "\n".join(bad)


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
    """`import lodestore.store` in a fresh interpreter loads neither torch, onnxruntime nor the engine."""
    code = (
        "import json, sys\n"
        "import lodestore.store as store\n"
        "s = store.Store\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({FORBIDDEN_AT_IMPORT!r}))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`import lodestore.store` pulled in {loaded}"


def test_one_installed_namespace() -> None:
    """The distribution installs only `lodestore`: `store` and `engine` are not top-level packages.

    Run outside the source tree (cwd=/) so the checkout's own folders are not on sys.path."""
    code = (
        "import importlib.util, json\n"
        "import lodestore, lodestore.store, lodestore.engine\n"
        "print(json.dumps([importlib.util.find_spec(n) is not None for n in ('store', 'engine')]\n"
        "                 + [lodestore.store.Store.__module__, lodestore.engine.Searcher.__module__]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120,
                         check=False, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    store_found, engine_found, store_mod, engine_mod = json.loads(out.stdout.strip().splitlines()[-1])
    assert not store_found and not engine_found, "a top-level `store` or `engine` package is installed"
    assert store_mod.startswith("lodestore.store.") and engine_mod.startswith("lodestore.engine.")


def test_pyproject_installs_only_lodestore() -> None:
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert all(p == "lodestore" or p.startswith("lodestore.") for p in tool["packages"]), tool["packages"]
    assert tool["package-dir"]["lodestore.store"] == "store"
    assert tool["package-dir"]["lodestore.engine"] == "engine"


#: The converter's libraries (lodestore[convert]) and the modules that import them.
CONVERTER_LIBRARIES = ("torch", "transformers", "onnx", "safetensors")
CONVERTER_MODULES = ("lodestore.text.convert", "lodestore.text.torch_model")


def test_only_the_converter_imports_its_libraries() -> None:
    """Under lodestore/, torch, transformers, onnx and safetensors are imported only by
    lodestore/text/convert.py and torch_model.py, and those two only by each other and by the
    convert-model command (lazily, inside cmd_convert_model)."""
    bad = []
    for path in _sources(ROOT / "lodestore"):
        rel = str(path.relative_to(ROOT))
        if rel in ("lodestore/text/convert.py", "lodestore/text/torch_model.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                names = [f"lodestore.text.{node.module or ''}".rstrip(".")] + [
                    f"lodestore.text.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] in CONVERTER_LIBRARIES or (
                        name.startswith(CONVERTER_MODULES) and rel != "lodestore/_cli_text.py"):
                    bad.append(f"{rel}:{node.lineno}: imports {name}")
    assert not bad, "\n".join(bad)


def test_indexing_and_search_never_load_the_converter(tmp_path: Path) -> None:
    """Building the CLI's parser, encoding, indexing and searching text load none of the converter's
    libraries (and importing the converter module itself loads none either)."""
    code = (
        "import json, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "import lodestore, lodestore.cli, lodestore.text.convert, lodestore.text.checkpoint\n"
        "from lodestore import Index\n"
        "lodestore.cli.build_parser()\n"
        f"with Index.create({str(tmp_path / 'i')!r}, num_centroids=4) as index:\n"
        "    index.add(['a', 'b', 'c'], ['insulin and diabetes', 'the eiffel tower', 'protein folding'])\n"
        "    assert index.search('diabetes', k=1)[0].id == 'a'\n"
        f"libraries, modules = {CONVERTER_LIBRARIES!r}, {CONVERTER_MODULES[1:]!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in libraries or m in modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
