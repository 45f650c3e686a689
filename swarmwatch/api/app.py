"""The FastAPI application: routers, error handlers, body limits and the web map.

create_app() is the one entry point; `swarmwatch serve` runs it under uvicorn.
"""

from __future__ import annotations

import importlib
import logging
import re
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from swarmwatch import __version__, shipped
from swarmwatch.analysis.caches import AnalysisCaches
from swarmwatch.api import docs
from swarmwatch.api.answercache import AnswerCache
from swarmwatch.api.errors import send_json_error
from swarmwatch.api.openapi import complete_openapi, validation_error
from swarmwatch.api.ratelimit import RateLimitMiddleware
from swarmwatch.api.routes import health, keys, studies, torrents
from swarmwatch.api.routes.web import GeometryLimits
from swarmwatch.api.schemas import TorrentCreate
from swarmwatch.config import Settings, get_settings
from swarmwatch.metrics import ServiceMetrics
from swarmwatch.store import Database
from swarmwatch.store.keptframes import PersistedFrames

log = logging.getLogger(__name__)

WEB_DIR = shipped("web")

#: Routers of later parts, mounted when their module is present.
OPTIONAL_ROUTERS = (
    "swarmwatch.api.routes.analysis",
    "swarmwatch.api.routes.web",
    "swarmwatch.api.routes.video",
)


def create_app(
    settings: Settings | None = None,
    database: Database | None = None,
    caches: AnalysisCaches | None = None,
) -> FastAPI:
    """The app, with its own analysis caches unless given some (see AnalysisCaches)."""
    settings = settings or get_settings()
    database = database or Database(settings.database_url)
    app = SwarmwatchAPI(
        title="swarmwatch",
        version=__version__,
        summary="Where the people in BitTorrent swarms are: registry, estimates, rankings, maps.",
        # Bodies are small JSON or one .torrent; anything larger is refused with 413.
        max_body_size=settings.max_torrent_bytes + 64 * 1024,
        # /docs is swarmwatch.api.docs (no CDN); ReDoc would load one.
        docs_url=None,
        redoc_url=None,
    )
    # Frames and geometry are large and very compressible JSON (≈7× smaller).
    app.add_middleware(GZipMiddleware, minimum_size=1000)
    # Inside the rate limit (a cached answer still costs the client a token), outside gzip
    # (a kept answer is kept compressed, per Accept-Encoding).
    app.add_middleware(AnswerCache, ttl=settings.api_answer_cache_seconds)
    app.add_middleware(
        RateLimitMiddleware,
        write_rate=settings.api_write_rate,
        write_burst=settings.api_write_burst,
        read_rate=settings.api_read_rate,
        read_burst=settings.api_read_burst,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.analysis_caches = caches or AnalysisCaches(persisted=PersistedFrames())
    app.state.metrics = ServiceMetrics()
    app.state.geometry = GeometryLimits(settings)

    for router_module in (health, studies, torrents, keys, docs):
        app.include_router(router_module.router)
    for name in OPTIONAL_ROUTERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        app.include_router(module.router)

    app.add_exception_handler(RequestValidationError, validation_error)

    @app.exception_handler(sqlalchemy.exc.TimeoutError)
    @app.exception_handler(sqlalchemy.exc.OperationalError)
    async def _busy(request: Request, exc: Exception) -> JSONResponse:
        # The database is overloaded or restarting: a retryable 503, not a server bug.
        log.warning("database unavailable (%s) on %s", type(exc).__name__, request.url.path)
        return JSONResponse(
            status_code=503,
            content={"detail": "database busy or unavailable; retry shortly"},
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(sqlalchemy.exc.DataError)
    async def _bad_value(request: Request, exc: Exception) -> JSONResponse:
        # A value the database cannot store (out of range, bad encoding): the client's input.
        return JSONResponse(status_code=422, content={"detail": "a value cannot be stored"})

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: Exception) -> Response:
        # The client hung up while sending its body (a timeout, a load test ending):
        # no one is left to answer, and it is not a server fault worth a traceback.
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        # Never echo the exception: it could carry data we must not publish.
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": "internal error"})

    return app


class SwarmwatchAPI(FastAPI):
    """FastAPI whose body-limit answer is JSON like every other error, and whose OpenAPI
    document describes the bodies and errors the routes really take and send."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = complete_openapi(super().openapi(), [TorrentCreate])
        return self.openapi_schema

    def build_middleware_stack(self) -> Any:
        stack = JSONBodyLimitErrors(super().build_middleware_stack(), self.max_body_size)
        return PrintableHeaderValues(stack)


#: Bytes no HTTP header value may carry (RFC 9110 5.5); uvicorn's httptools refuses them.
UNSENDABLE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class PrintableHeaderValues:
    """Replace control characters in response header values with '?'.

    Some headers echo client text (a study or title name in X-Swarmwatch-Study): a
    name with a control character must not turn a good answer into a dropped
    connection (uvicorn refuses to send such a header and closes the socket).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_printable(message: Any) -> None:
            if message["type"] == "http.response.start" and any(
                UNSENDABLE.search(v) for _, v in message.get("headers", ())
            ):
                headers = [(k, UNSENDABLE.sub(b"?", v)) for k, v in message["headers"]]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_printable)


class JSONBodyLimitErrors:
    """Turn Starlette's plain-text 413 (from FastAPI's max_body_size) into {"detail": ...}.

    The body limit runs outside every exception handler, so its answer is the
    one error of this API that would otherwise not be JSON.
    """

    def __init__(self, app: Any, limit: int | None) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rewriting = False

        async def send_json_413(message: Any) -> None:
            nonlocal rewriting
            if message["type"] == "http.response.start" and message["status"] == 413:
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(b"text/plain"):
                    rewriting = True
                    detail = f"request body larger than {self.limit} bytes"
                    await send_json_error(send, 413, detail)
                    return
            if rewriting:
                return  # the plain-text body is replaced by the JSON one above
            await send(message)

        await self.app(scope, receive, send_json_413)
