"""Running the app under uvicorn: one process, or `workers` processes sharing the store on disk.

Each worker process builds its own app from the settings in an environment
variable (uvicorn imports `lodestore.server:app_from_env` as an app factory in
every worker), opens the store read-only for searching, and takes the store's
writer lock only for the length of a write.
"""

from __future__ import annotations

import os
import sys

from starlette.applications import Starlette

from ._app import create_app
from ._config import CONFIG_ENV, ServeConfig


def app_from_env() -> Starlette:
    """The app for the settings in $LODESTORE_SERVE_CONFIG (set by serve() for its worker processes)."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise RuntimeError(f"{CONFIG_ENV} is not set: start the server with `lodestore serve PATH`")
    return create_app(ServeConfig.from_json(text))


def serve(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8080, workers: int = 1,
          log_level: str = "info") -> None:
    """Serve until interrupted. Binds to loopback unless `host` says otherwise."""
    import uvicorn

    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    os.environ[CONFIG_ENV] = config.to_json()
    print(f"lodestore serve: {config.path} at http://{host}:{port}/ ({workers} worker{'s' * (workers > 1)}"
          f"{', read-only' if config.read_only else ''}{', API keys required for ' + config.protect if config.api_keys or config.api_key_file else ''})",
          file=sys.stderr, flush=True)
    uvicorn.run("lodestore.server:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False, timeout_graceful_shutdown=10)
