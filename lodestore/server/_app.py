"""The Starlette app: routes, authentication, body limits, and one JSON shape for every error.

Searches run in a thread pool of `search_threads`; writes run in their own single
thread, one at a time, so a write (which encodes text and commits) never holds up
a search; opening a newer generation has a thread of its own too. Every answer that is not a success is {"error": {"status", "code",
"message", "field"?}}: bad input is a 4xx naming the field, a damaged store is a
503 naming the file or chunk, and nothing answers with a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from lodestore.store import CorruptStoreError, StoreError, UnsupportedFormatError

from . import _validate as v
from ._backend import Backend, process_rss
from ._config import ServeConfig
from ._openapi import openapi_document
from ._validate import ApiError

log = logging.getLogger("lodestore.server")


class Service:
    """Per-process state of the app: the backend, its thread pools, the write lock, the settings."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.limits = config.limits
        self.api_keys = config.keys()
        self.backend = Backend(config)
        self.search_pool = ThreadPoolExecutor(config.search_threads, thread_name_prefix="lodestore-search")
        self.write_pool = ThreadPoolExecutor(1, thread_name_prefix="lodestore-write")
        # opening a new generation: its own thread, so it never queues behind searches or a long write
        self.refresh_pool = ThreadPoolExecutor(1, thread_name_prefix="lodestore-refresh")
        self.write_lock = asyncio.Lock()
        self.refresh_lock = asyncio.Lock()
        self.started = time.time()

    async def run(self, pool: ThreadPoolExecutor, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def fresh(self) -> None:
        """Make the snapshot the newest committed generation (one refresh at a time; others wait for it)."""
        if not self.backend.stale():
            return
        async with self.refresh_lock:
            if self.backend.stale():
                await self.run(self.refresh_pool, self.backend.open_snapshot)

    def close(self) -> None:
        self.search_pool.shutdown(wait=True)
        self.write_pool.shutdown(wait=True)
        self.refresh_pool.shutdown(wait=True)
        self.backend.close()


def _service(request: Request) -> Service:
    return request.app.state.service


def _authorize(request: Request, write: bool) -> None:
    service = _service(request)
    keys = service.api_keys
    if not keys or (not write and service.config.protect != "all"):
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    given = token.strip().encode("utf-8")
    ok = False
    for key in keys:  # every key compared, each in constant time
        ok |= hmac.compare_digest(given, key.encode("utf-8"))
    if scheme.lower() != "bearer" or not ok:
        raise ApiError(401, "unauthorized", "this endpoint needs Authorization: Bearer <API key>", "Authorization",
                       {"WWW-Authenticate": "Bearer"})


async def _body(request: Request, empty_ok: bool = False) -> dict[str, Any]:
    """The JSON object in the body, read no further than the body limit (413 beyond it); {} for none if empty_ok."""
    limit = _service(request).limits.max_body_bytes
    declared = request.headers.get("content-length")
    too_big = ApiError(413, "body_too_large", f"the request body is over this server's limit of {limit} bytes", "body")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    body = b"".join(chunks)
    if empty_ok and not body.strip():
        return {}
    return v.parse_json(body)


def _ensure_writable(service: Service) -> None:
    if service.config.read_only:
        raise ApiError(403, "read_only", "this server was started with --read-only; it takes no writes")


# --------------------------------------------------------------------------- endpoints


async def search(request: Request) -> Response:
    _authorize(request, write=False)
    service = _service(request)
    data = await _body(request)
    await service.fresh()
    snap = service.backend.acquire()
    try:
        req = v.search_request(data, service.limits, snap.dim, service.backend.kind == "text",
                               snap.store.metadata_fields if snap.store is not None else {})
    except BaseException:
        snap.release()
        raise
    t0 = time.perf_counter()
    future = asyncio.get_running_loop().run_in_executor(
        service.search_pool, functools.partial(snap.search, req.texts, req.vectors, req.k, **req.options()))
    future.add_done_callback(lambda _: snap.release())  # the snapshot stays open until the search ends, even after a 504
    try:
        results = await asyncio.wait_for(asyncio.shield(future), service.limits.timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(504, "timeout", f"the search took longer than this server's limit of "
                                       f"{service.limits.timeout_s} s") from None
    took_ms = (time.perf_counter() - t0) * 1000
    service.backend.counters.searches += 1
    service.backend.counters.queries += len(results)
    body: dict[str, Any] = {"generation": snap.generation, "took_ms": round(took_ms, 3)}
    if req.batch:
        body["results"] = [{"hits": hits} for hits in results]
    else:
        body["hits"] = results[0]
    return JSONResponse(body)


async def _write(request: Request, parse: Any, op: Any, empty_ok: bool = False) -> Response:
    """Shared path of the three writes: auth, parse, wait for the writer (bounded), commit, refresh, answer."""
    _authorize(request, write=True)
    service = _service(request)
    _ensure_writable(service)
    data = await _body(request, empty_ok)
    parsed = parse(data)
    deadline = time.monotonic() + service.limits.write_wait_s
    try:
        await asyncio.wait_for(service.write_lock.acquire(), service.limits.write_wait_s)
    except asyncio.TimeoutError:
        raise ApiError(503, "writer_busy", "another write is in progress; try again", None,
                       {"Retry-After": "1"}) from None
    try:
        generation = await service.run(service.write_pool, op, parsed, deadline)
    finally:
        service.write_lock.release()
    await service.fresh()  # this worker answers from the new generation from now on
    return JSONResponse({"generation": generation})


async def add_documents(request: Request) -> Response:
    service = _service(request)
    backend = service.backend
    return await _write(request, lambda d: v.add_request(d, service.limits, backend.dim, backend.kind == "text"),
                        backend.add)


async def delete_documents(request: Request) -> Response:
    service = _service(request)
    return await _write(request, lambda d: v.delete_request(d, service.limits), service.backend.delete)


async def compact(request: Request) -> Response:
    service = _service(request)

    def parse(data: dict[str, Any]) -> None:
        v.check_fields(data, set())

    return await _write(request, parse, lambda _, deadline: service.backend.compact(deadline), empty_ok=True)


async def stats(request: Request) -> Response:
    _authorize(request, write=False)
    service = _service(request)
    await service.fresh()
    snap = service.backend.acquire()
    try:
        store_stats = await service.run(service.search_pool, snap.stats)
    finally:
        snap.release()
    searcher = store_stats.pop("searcher")
    c = service.backend.counters
    body = {
        "kind": service.backend.kind,
        **store_stats,
        "memory": {"rss_bytes": process_rss(),
                   "searcher_resident_bytes": searcher["resident_bytes"] if searcher else 0},
        "searcher": searcher,
        "server": {"searches": c.searches, "queries": c.queries, "writes": c.writes, "refreshes": c.refreshes,
                   "errors": c.errors, "uptime_s": round(time.time() - service.started, 3),
                   "read_only": service.config.read_only, "auth": bool(service.api_keys),
                   "protect": service.config.protect},
        "limits": v.json_safe(service.config.limits.__dict__),
    }
    return JSONResponse(v.json_safe(body))


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    service = _service(request)
    await service.fresh()
    snap = service.backend.acquire()
    snap.release()
    return JSONResponse({"status": "ready", "generation": snap.generation, "kind": service.backend.kind})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


async def page(request: Request) -> Response:
    html = resources.files("lodestore.server").joinpath("static/index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


# --------------------------------------------------------------------------- errors


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status >= 500:
        _count_error(request)
    return _error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(ApiError(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}"))


async def _store_error(request: Request, exc: Exception) -> Response:
    """A damaged or unreadable store: 503 naming what failed (CorruptStoreError names the file and chunk)."""
    _count_error(request)
    code = ("corrupt_store" if isinstance(exc, CorruptStoreError) else
            "unsupported_format" if isinstance(exc, UnsupportedFormatError) else "store_error")
    log.error("%s %s: %s", request.method, request.url.path, exc)
    return _error_response(ApiError(503, code, str(exc)))


async def _value_error(request: Request, exc: Exception) -> Response:
    """A check the library made that ours did not (its message names the document or query)."""
    return _error_response(ApiError(422, "invalid_request", str(exc)))


async def _internal_error(request: Request, exc: Exception) -> Response:
    _count_error(request)
    log.exception("%s %s failed", request.method, request.url.path)
    return _error_response(ApiError(500, "internal_error", f"internal error ({type(exc).__name__}); see the server log"))


def _count_error(request: Request) -> None:
    service = getattr(request.app.state, "service", None)
    if service is not None:
        service.backend.counters.errors += 1


# --------------------------------------------------------------------------- the app


def create_app(config: ServeConfig) -> Starlette:
    """The ASGI app serving `config.path`; it opens the store at startup (lifespan) and closes it at shutdown."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service = Service(config)
        app.state.service = service
        try:
            await service.fresh()
        except (StoreError, ValueError) as e:  # /ready says 503 and each request names the failure
            log.error("cannot open %s: %s", config.path, e)
        try:
            yield
        finally:
            service.close()

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/search", search, methods=["POST"]),
        Route("/documents", add_documents, methods=["POST"]),
        Route("/documents", delete_documents, methods=["DELETE"]),
        Route("/compact", compact, methods=["POST"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    handlers = {
        ApiError: _api_error,
        HTTPException: _http_error,
        StoreError: _store_error,
        ValueError: _value_error,
        Exception: _internal_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
