"""Liveness, readiness and Prometheus metrics.

- `GET /livez`: liveness. 200 whenever the process serves HTTP; it checks no dependency, since
  restarting the API cannot fix Temporal or the object store.
- `GET /readyz` (and `GET /healthz`, its older name, which `videogen up`, the tests and the
  k8s readiness probe use): readiness. 200 when Temporal and the object store both answer,
  each within a short timeout; 503 naming the one that does not, or while the server drains
  on SIGTERM, so a load balancer stops sending it traffic.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

from api import errors, fleet
from api.deps import ClientDep, SettingsDep, StoreDep
from videogen.storage import ObjectStore

log = structlog.get_logger(__name__)
router = APIRouter(tags=["operations"])

# Each dependency's answer must come within this: a probe's own timeout is a few seconds.
CHECK_TIMEOUT_S = 1.5
# A key no one writes: asking whether it exists is a cheap round trip to the store.
PROBE_KEY = "healthz/probe"
OK = "ok"


@router.get("/livez")
async def livez() -> dict[str, str]:
    """200 while the process serves: for a liveness probe."""
    return {"status": OK}


@router.get("/readyz")
@router.get("/healthz")
async def readyz(
    request: Request, client: ClientDep, store: StoreDep, response: Response
) -> dict[str, object]:
    """200 when Temporal and the object store answer; 503 otherwise, saying which does not."""
    temporal, storage = await asyncio.gather(_check_temporal(client), _check_store(store))
    checks = {"temporal": temporal, "storage": storage}
    draining = request.app.state.draining.is_set()
    ok = not draining and all(v == OK for v in checks.values())
    response.status_code = 200 if ok else 503
    if not ok:
        response.headers["Retry-After"] = str(errors.RETRY_AFTER_S)
    status = OK if ok else ("draining" if draining else "unavailable")
    return {"status": status, "checks": checks, "storage": store.describe()}


async def _check_temporal(client: Client) -> str:
    try:
        await asyncio.wait_for(
            client.workflow_service.get_system_info(
                GetSystemInfoRequest(), timeout=timedelta(seconds=CHECK_TIMEOUT_S)
            ),
            timeout=CHECK_TIMEOUT_S + 0.5,
        )
    except Exception as err:
        return _failed(err)
    return OK


async def _check_store(store: ObjectStore) -> str:
    try:
        await asyncio.wait_for(asyncio.to_thread(store.exists, PROBE_KEY), timeout=CHECK_TIMEOUT_S)
    except Exception as err:
        return _failed(err)
    return OK


def _failed(err: Exception) -> str:
    text = str(err).splitlines()[0][:300] if str(err) else "no answer in time"
    return f"error: {type(err).__name__}: {text}"


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
