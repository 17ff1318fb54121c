"""The FastAPI application factory: `create_app(settings)`.

Stateless: any number of replicas can run behind a load balancer; all job state is in Temporal
and all bytes are in the object store.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from prometheus_client import Counter, Histogram

from api import errors
from api.fleet import FleetCache
from api.routers import admin, events, files, health, videos, webhooks
from videogen import tracing
from videogen.settings import Settings
from videogen.storage import open_store
from videogen.temporal import connect

REQUESTS = Counter("videogen_api_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("videogen_api_request_seconds", "HTTP request latency", ["method", "route"])


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.keys  # noqa: B018 - a malformed VIDEOGEN_API_KEYS fails at start, not per request

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.store = open_store(settings.resolved_storage_url)
        app.state.client = await connect(wait_s=30)
        app.state.fleet = FleetCache(settings.fleet_cache_s)
        yield

    app = FastAPI(
        title="videogen",
        summary="Durable text-to-video generation (OpenAI Videos API shape)",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(videos.router)
    app.include_router(events.router)
    app.include_router(files.router)
    app.include_router(webhooks.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    tracing.instrument_app(app)

    @app.middleware("http")
    async def _metrics(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        LATENCY.labels(request.method, path).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        return response

    return app
