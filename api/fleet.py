"""The GPU fleet as an autoscaler sees it: backlog, running jobs, workers, drain time.

Per warm GPU task queue (one per model version and pool) and per tier:
- backlog: Temporal's task-queue stats per priority key (`describe_task_queue`, report_stats).
  The server caches them for about 5 s and they exclude tasks already running;
- running: jobs in progress (visibility, `VideogenStatus = 'in_progress'`): about the number
  of busy GPU workers (one job per GPU), though it also counts a job in its short encode phase
  and a preempted job waiting for its retry (which is in the backlog too);
- workers polling: distinct worker identities that polled the queue in the last
  `queue.POLLER_FRESH_S` seconds, i.e. idle workers (a busy one does not poll; Temporal keeps
  listing a poller for minutes after it stopped, so older entries are dead or busy workers);
- estimated drain time (the product requirements' "best single health metric",
  docs/operations.md "Metrics"):
  backlog at or ahead of the tier's priority x average generation time / GPU workers, where
  GPU workers = workers polling + running. +Inf with a backlog and no worker; NaN until a job
  of the model has completed (no generation time to go by).

Served as JSON by `GET /v1/admin/fleet` (admin key) and as Prometheus gauges on the API's
`/metrics` (refreshed on scrape, at most every `VIDEOGEN_FLEET_CACHE_S`). Every API replica
reports the same fleet: aggregate these series with max, not sum.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from prometheus_client import Gauge
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from api import queue
from videogen import contracts as c
from videogen import visibility as vis
from videogen.registry import ServedModel
from videogen.settings import Settings
from videogen.temporal import API_RPC_TIMEOUT

log = structlog.get_logger(__name__)

STATS_LAG_S = 5.0

QUEUE_DEPTH = Gauge(
    "videogen_queue_depth",
    "Jobs waiting for a GPU (Temporal backlog; lags ~5 s, excludes running), by "
    "priority key; `tier` names the tiers of that key ('a+b' when they share it).",
    ["queue", "tier", "priority"],
)
RUNNING_JOBS = Gauge("videogen_running_jobs", "Jobs running on a GPU.", ["queue", "tier"])
WORKERS_POLLING = Gauge("videogen_workers_polling", "GPU workers polling the queue.", ["queue"])
BACKLOG_AGE = Gauge(
    "videogen_queue_backlog_age_seconds", "Age of the oldest waiting task of the queue.", ["queue"]
)
DRAIN_TIME = Gauge(
    "videogen_estimated_drain_time_seconds",
    "Backlog at or ahead of the tier x average generation time / GPU workers.",
    ["queue", "tier"],
)


@dataclass
class TierLoad:
    tier: str
    priority: int
    backlog: int
    running: int
    # Seconds; None where it cannot be estimated yet (JSON has no NaN), inf as "inf".
    estimated_drain_time_s: float | str | None


@dataclass
class QueueLoad:
    queue: str
    model: str
    model_version: str
    pool: str
    workers_polling: int
    backlog: int
    backlog_age_s: float
    tasks_add_rate: float
    tasks_dispatch_rate: float
    running: int
    avg_generation_s: float | None
    tiers: list[TierLoad] = field(default_factory=list)


@dataclass
class Fleet:
    generated_at: float
    stats_lag_s: float
    queues: list[QueueLoad]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drain_time(backlog_ahead: int, avg_s: float, workers: int) -> float:
    """Seconds to work off `backlog_ahead` jobs: 0 with none, +inf with no worker, NaN with no
    generation time to go by."""
    if backlog_ahead <= 0:
        return 0.0
    if workers <= 0:
        return math.inf
    if avg_s <= 0:
        return math.nan
    return backlog_ahead * avg_s / workers


async def snapshot(client: Client, settings: Settings) -> Fleet:
    """Every warm queue: each model of the catalog (as it stood at start) in each pool."""
    pools = [""] + [t for t, p in settings.tiers.items() if p.dedicated_pool]
    models = list(settings.registry.models.values())
    avgs = await asyncio.gather(*(queue.average_generation_seconds(client, m.name) for m in models))
    queues = await asyncio.gather(
        *(
            _queue(client, settings, m, pool, avg)
            for m, avg in zip(models, avgs, strict=True)
            for pool in pools
        )
    )
    return Fleet(generated_at=time.time(), stats_lag_s=STATS_LAG_S, queues=list(queues))


async def _queue(
    client: Client, settings: Settings, served: ServedModel, pool: str, avg: float
) -> QueueLoad:
    name = settings.warm_queue(served, pool)
    model = served.name
    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=name),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            report_stats=True,
        ),
        timeout=API_RPC_TIMEOUT,
    )
    by_priority = {
        int(k): int(v.approximate_backlog_count) for k, v in resp.stats_by_priority_key.items()
    }
    tiers = [t for t in settings.tiers if settings.pool_for(t) == pool]
    running = dict(
        zip(tiers, await asyncio.gather(*(_running(client, model, t) for t in tiers)), strict=True)
    )
    pollers = queue.fresh_pollers(resp.pollers)
    workers = pollers + sum(running.values())
    loads = []
    for tier in tiers:
        prio = settings.tiers[tier].priority
        ahead = sum(n for p, n in by_priority.items() if p <= prio)
        drain = drain_time(ahead, avg, workers)
        loads.append(
            TierLoad(
                # Tiers sharing a priority key share its backlog (Temporal cannot tell them
                # apart): each shows the whole of it, an upper bound.
                tier=tier,
                priority=prio,
                backlog=by_priority.get(prio, 0),
                running=running[tier],
                estimated_drain_time_s=None
                if math.isnan(drain)
                else ("inf" if math.isinf(drain) else round(drain, 3)),
            )
        )
    age = resp.stats.approximate_backlog_age
    return QueueLoad(
        queue=name,
        model=model,
        model_version=served.ref,
        pool=pool or "shared",
        workers_polling=pollers,
        backlog=int(resp.stats.approximate_backlog_count),
        backlog_age_s=age.seconds + age.nanos / 1e9,
        tasks_add_rate=round(resp.stats.tasks_add_rate, 3),
        tasks_dispatch_rate=round(resp.stats.tasks_dispatch_rate, 3),
        running=sum(running.values()),
        avg_generation_s=round(avg, 3) if avg else None,
        tiers=loads,
    )


async def _running(client: Client, model: str, tier: str) -> int:
    resp = await client.count_workflows(
        vis.jobs(
            vis.eq(c.SA_MODEL, model),
            vis.eq(c.SA_TIER, tier),
            vis.eq(c.SA_STATUS, c.Status.IN_PROGRESS),
            status="Running",
        )
    )
    return resp.count


class FleetCache:
    """One snapshot per `ttl_s` per API process, shared by scrapes and admin calls."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._at = -math.inf
        self._fleet: Fleet | None = None
        self._lock = asyncio.Lock()

    async def get(self, client: Client, settings: Settings) -> Fleet:
        async with self._lock:
            if self._fleet is None or time.monotonic() - self._at >= self.ttl_s:
                self._fleet = await snapshot(client, settings)
                self._at = time.monotonic()
                export(self._fleet, settings)
            return self._fleet


def clear() -> None:
    """Drop every fleet series: no data (Temporal unreachable) must not read as stale values;
    an autoscaler query on absent series errors out and keeps its current scale."""
    for gauge in (QUEUE_DEPTH, RUNNING_JOBS, WORKERS_POLLING, BACKLOG_AGE, DRAIN_TIME):
        gauge.clear()


def export(fleet: Fleet, settings: Settings) -> None:
    """Set the Prometheus gauges from a snapshot (series of vanished tiers dropped)."""
    clear()
    for q in fleet.queues:
        WORKERS_POLLING.labels(q.queue).set(q.workers_polling)
        BACKLOG_AGE.labels(q.queue).set(q.backlog_age_s)
        # One depth series per priority key, so summing them never counts a backlog twice.
        by_priority: dict[int, list[TierLoad]] = {}
        for t in q.tiers:
            by_priority.setdefault(t.priority, []).append(t)
        for prio, loads in by_priority.items():
            QUEUE_DEPTH.labels(q.queue, "+".join(sorted(t.tier for t in loads)), str(prio)).set(
                loads[0].backlog
            )
        for t in q.tiers:
            RUNNING_JOBS.labels(q.queue, t.tier).set(t.running)
            drain = t.estimated_drain_time_s
            DRAIN_TIME.labels(q.queue, t.tier).set(
                math.nan if drain is None else math.inf if drain == "inf" else float(drain)
            )
