"""Liveness/readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

import structlog
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from api import fleet
from api.deps import ClientDep, SettingsDep, StoreDep

log = structlog.get_logger(__name__)
router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz(client: ClientDep, store: StoreDep, response: Response) -> dict[str, object]:
    """200 when Temporal answers; 503 otherwise, so a load balancer stops sending traffic."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(
            client.workflow_service.get_system_info(GetSystemInfoRequest()), timeout=3
        )
        checks["temporal"] = "ok"
    except Exception as err:
        checks["temporal"] = f"error: {err}"
    ok = all(v == "ok" for v in checks.values())
    response.status_code = 200 if ok else 503
    return {"status": "ok" if ok else "unavailable", "checks": checks, "storage": store.describe()}


@router.get("/metrics")
async def metrics(request: Request, client: ClientDep, settings: SettingsDep) -> Response:
    """This API process's metrics, the SDK's, and the fleet gauges (api/fleet.py), refreshed
    at most every VIDEOGEN_FLEET_CACHE_S."""
    try:
        await asyncio.wait_for(request.app.state.fleet.get(client, settings), timeout=5)
    except Exception as err:  # a scrape still answers, without fleet gauges
        fleet.clear()
        log.warning("fleet snapshot failed", error=f"{type(err).__name__}: {err}")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
