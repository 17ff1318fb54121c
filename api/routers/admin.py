"""Operator endpoints, behind the admin key: what an autoscaler (KEDA, a custom one) reads."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from api.deps import ClientDep, SettingsDep
from api.errors import ApiError, NotFoundError
from api.fleet import FleetCache

router = APIRouter(prefix="/v1/admin", tags=["operations"])


def require_admin(request: Request, settings: SettingsDep) -> None:
    if not settings.admin_key:
        # Off unless configured: do not even admit the endpoint exists.
        raise NotFoundError(
            "admin endpoints are off; set VIDEOGEN_ADMIN_KEY to enable them", code="not_found"
        )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "missing admin key: send `Authorization: Bearer <admin key>`",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(token.strip().encode(), settings.admin_key.encode()):
        raise ApiError(
            403,
            "this endpoint needs the admin key (VIDEOGEN_ADMIN_KEY), not a user's API key",
            code="forbidden",
        )


def fleet_cache(request: Request) -> FleetCache:
    return request.app.state.fleet


@router.get("/fleet", dependencies=[Depends(require_admin)])
async def fleet(
    client: ClientDep, settings: SettingsDep, cache: Annotated[FleetCache, Depends(fleet_cache)]
) -> dict[str, Any]:
    """Per GPU queue and tier: backlog (Temporal's stats: ~5 s stale, running tasks excluded),
    running jobs, workers polling, average generation time and estimated drain time."""
    return (await cache.get(client, settings)).to_dict()
