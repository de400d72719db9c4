"""`lodestore serve`: an HTTP API (and a search page) over one store, for many clients and one writer.

Needs the optional extra: pip install 'lodestore[serve]' (Starlette + uvicorn).
Nothing else in lodestore imports Starlette, and this package loads it only when
one of the names below that need it is used (the CLI reads Limits without it).

    from lodestore.server import ServeConfig, create_app, serve
    serve(ServeConfig("my-index"), port=8080, workers=2)
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it (imported on first use, PEP 562).
_EXPORTS = {
    "ApiError": "lodestore.server._validate",
    "Limits": "lodestore.server._config",
    "ServeConfig": "lodestore.server._config",
    "read_api_keys": "lodestore.server._config",
    "create_app": "lodestore.server._app",
    "app_from_env": "lodestore.server._run",
    "serve": "lodestore.server._run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lodestore.server' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
