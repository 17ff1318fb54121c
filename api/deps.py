"""FastAPI dependencies: settings, Temporal client, object store, the caller's API key.

Everything comes from `app.state`, set by the app factory's lifespan, so tests can build an app
with their own `Settings` (or override a dependency) without touching the environment.

They are `async def` although none awaits: FastAPI runs a plain `def` dependency in its thread
pool, and four thread hops per request cost more than the whole lookup (measured in a profile of
`POST /v1/videos`).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from temporalio.client import Client

from api.errors import ApiError
from videogen.registry import Live, Registry
from videogen.settings import ApiKey, Settings
from videogen.storage import ObjectStore


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> Registry:
    """The model catalog now: a changed catalog file is read (in a thread) at most once a
    second."""
    live: Live = request.app.state.models
    if live.due():
        await asyncio.to_thread(live.refresh)
    return live.registry


async def get_client(request: Request) -> Client:
    return request.app.state.client


async def get_store(request: Request) -> ObjectStore:
    return request.app.state.store


async def current_key(
    request: Request, settings: Annotated[Settings, Depends(get_settings)]
) -> ApiKey:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "missing API key: send `Authorization: Bearer <key>`",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = settings.lookup_key(token.strip())
    if key is None:
        raise ApiError(
            401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )
    return key


SettingsDep = Annotated[Settings, Depends(get_settings)]
ClientDep = Annotated[Client, Depends(get_client)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
KeyDep = Annotated[ApiKey, Depends(current_key)]
