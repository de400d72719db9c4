"""What `lodestore serve` is told: the store, the limits every request is held to, and who may write.

Plain dataclasses that round-trip through JSON, because `--workers N` starts N
processes that each rebuild the app from the same settings (an environment
variable carries them; see lodestore/server/_run.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

#: Environment variable that hands the serve settings to each uvicorn worker process.
CONFIG_ENV = "LODESTORE_SERVE_CONFIG"


@dataclass(frozen=True)
class Limits:
    """Upper bounds on one request. The defaults suit a shared service; raise them on purpose."""

    max_body_bytes: int = 8 << 20  # request body (JSON) size
    max_k: int = 1000  # hits per query
    max_batch: int = 64  # queries in one /search request
    max_query_chars: int = 4096  # one text query
    max_query_tokens: int = 512  # rows of one vector query
    max_documents: int = 1000  # documents in one add or delete
    max_text_chars: int = 1_000_000  # one document's text
    max_doc_tokens: int = 4096  # rows of one vector document
    max_id_chars: int = 512  # one document id
    timeout_s: float = 30.0  # a search's answer (504 after it)
    write_wait_s: float = 30.0  # waiting for the writer (this worker's and the store's lock): 503 after it

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"limit {f.name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class ServeConfig:
    """One served store: its path, the limits, read-only or not, and the API keys (if any)."""

    path: str
    limits: Limits = field(default_factory=Limits)
    read_only: bool = False
    api_keys: tuple[str, ...] = ()  # keys given directly (tests, embedding); see keys()
    api_key_file: str | None = None  # keys read from this file by each worker (so they are not in the environment)
    protect: str = "writes"  # "writes": only changes need a key; "all": every endpoint but /health and /ready
    search_threads: int = 4  # searches one worker runs at the same time
    memory_budget: str | None = None  # passed to the Searcher (None: its default)
    encoder_dir: str | None = None  # a text index's encoder directory (None: the one it records, the packaged MiniLM)

    def __post_init__(self) -> None:
        if self.protect not in ("writes", "all"):
            raise ValueError(f"protect must be 'writes' or 'all', got {self.protect!r}")
        if not isinstance(self.search_threads, int) or self.search_threads < 1:
            raise ValueError(f"search_threads must be a positive integer, got {self.search_threads!r}")

    def keys(self) -> tuple[str, ...]:
        """Every accepted API key; empty: no authentication."""
        return self.api_keys + (read_api_keys(self.api_key_file) if self.api_key_file else ())

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        data: dict[str, Any] = json.loads(text)
        data["limits"] = Limits(**data.get("limits", {}))
        data["api_keys"] = tuple(data.get("api_keys", ()))
        return cls(**data)


def read_api_keys(path: str | Path) -> tuple[str, ...]:
    """API keys from a file: one a line; blank lines and lines starting with # are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"cannot read the API key file {path}: {e.strerror or e}") from None
    keys = tuple(s for s in (line.strip() for line in lines) if s and not s.startswith("#"))
    if not keys:
        raise ValueError(f"the API key file {path} holds no key")
    short = [k for k in keys if len(k) < 16]
    if short:
        raise ValueError(f"the API key file {path} holds a key shorter than 16 characters; use long random keys")
    return keys
