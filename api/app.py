"""The FastAPI application factory: `create_app(settings)`.

Stateless: any number of replicas can run behind a load balancer; all job state is in Temporal
and all bytes are in the object store. `ApiServer` runs it (`videogen api`) and ends open event
streams at once on SIGTERM, so a rollout does not wait out the grace period.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType

import uvicorn
from fastapi import FastAPI
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors, openapi
from api.fleet import FleetCache
from api.routers import admin, codec, events, files, health, models, videos, web, webhooks
from videogen import registry, tracing
from videogen.codec import EncryptionCodec
from videogen.settings import Settings
from videogen.storage import open_store
from videogen.temporal import connect_api, refuse_development_secrets

REQUESTS = Counter("videogen_api_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("videogen_api_request_seconds", "HTTP request latency", ["method", "route"])


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # Malformed keys fail at start, not per request; public development secrets fail at start
    # outside the embedded stack.
    settings.keys  # noqa: B018
    settings.hashed_keys  # noqa: B018
    settings.payload_keyring  # noqa: B018
    refuse_development_secrets(settings.development_secrets())
    # A bad catalog fails at start too; a catalog file is followed for changes from here on.
    live_models = registry.Live(settings.models, settings.model, settings.model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.models = live_models
        app.state.store = open_store(settings.resolved_storage_url)
        # Lazy: the API starts while Temporal is down and answers 503 until it is back.
        app.state.client = await connect_api(settings.payload_keyring)
        # The codec endpoint's: built once, as the client's own.
        app.state.codec = EncryptionCodec(settings.payload_keyring)
        app.state.fleet = FleetCache(settings.fleet_cache_s)
        yield

    app = FastAPI(
        title="videogen",
        summary="Durable text-to-video generation (OpenAI Videos API shape)",
        version="0.1.0",
        lifespan=lifespan,
    )
    # Set when the server is told to stop (ApiServer): event streams end, readiness says 503.
    app.state.draining = asyncio.Event()
    errors.install(app)
    openapi.install(app)
    app.include_router(videos.router)
    app.include_router(models.router)
    app.include_router(events.router)
    app.include_router(files.router)
    app.include_router(webhooks.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(codec.router)
    web.install(app)
    tracing.instrument_app(app)

    app.add_middleware(BodyLimit)
    app.add_middleware(RequestMetrics)
    return app


# Request bodies: the largest valid create (two 4,000-character prompts of 4-byte characters,
# 16 metadata pairs, a webhook URL) is well under this.
MAX_BODY_BYTES = 64 * 1024
# The codec endpoints take Temporal payloads, which the server lets grow to 2 MB each.
LARGER_BODIES = {"/codec/": 8 * 1024 * 1024}


class _TooLarge(Exception):
    pass


class BodyLimit:
    """413 for a request body over MAX_BODY_BYTES (or the LARGER_BODIES limit of its path), read
    no further than the limit: refused on its Content-Length before any of it is read, or once
    the bytes streamed in pass the limit."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_BODY_BYTES,
        larger: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = LARGER_BODIES if larger is None else larger

    def _limit(self, path: str) -> int:
        return next((n for p, n in self.larger.items() if path.startswith(p)), self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            await self._refuse(send, limit)
            return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except _TooLarge:
            if not started:
                await self._refuse(send, limit)

    async def _refuse(self, send: Send, limit: int) -> None:
        body = json.dumps(
            errors.error_body(
                413,
                f"request body too large: at most {limit} bytes",
                code="request_too_large",
            )
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Count and time every HTTP request by route template and status. A plain ASGI middleware:
    Starlette's `@app.middleware("http")` costs a task and a body stream per request. The time
    is taken when the response starts, so an event stream counts its wait for the first byte,
    not its whole life."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = False

        def record(status: int) -> None:
            path = getattr(scope.get("route"), "path", "unmatched")
            LATENCY.labels(scope["method"], path).observe(time.perf_counter() - started)
            REQUESTS.labels(scope["method"], path, str(status)).inc()

        async def send_recorded(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recorded)
        finally:
            if not answered:  # an unhandled error: the outer middleware answers 500
                record(500)


def draining(app: FastAPI) -> asyncio.Event:
    """Set once the server is shutting down (see ApiServer)."""
    event: asyncio.Event = app.state.draining
    return event


class ApiServer(uvicorn.Server):
    """uvicorn's server that also tells the app when it is told to stop.

    On SIGTERM uvicorn stops accepting, then waits for open connections to close before the
    app's lifespan shutdown: an event stream of a queued job would hold it for as long as the
    job waits. `handle_exit` sets `draining(app)`, which ends the streams with a retry hint;
    `timeout_graceful_shutdown` (uvicorn.Config) bounds whatever else is still open.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # A signal handler interrupts the loop anywhere: hand the event over thread-safely.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(draining(self.app).set)
