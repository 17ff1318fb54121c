"""Where a queued job stands: jobs ahead of it and when it should start.

Estimates from Temporal alone: visibility counts of the jobs ahead and running, the idle GPU
workers polling the job's queue, and the model's recent generation times.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import PollerInfo, TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.client import WorkflowExecution as Execution
from temporalio.service import RPCError

from videogen import contracts as c
from videogen import visibility as vis
from videogen.temporal import API_RPC_TIMEOUT


async def queue_estimate(
    client: Client, ex: Execution, gpu_queue: str | None, tiers: list[str] | None = None
) -> tuple[int, int]:
    """(jobs ahead of this queued one, estimated start as a Unix time).

    Ahead: queued jobs of the same model and pool (`tiers` sharing it) with a higher priority,
    or the same priority and an earlier start (fairness may interleave users of one priority:
    an estimate). The ETA spreads
    those and the jobs running now over the GPU workers polling the queue, at the average
    generation time of the model's recent completed jobs.
    """
    sa = ex.typed_search_attributes
    model = sa.get(c.MODEL_KEY)
    prio = sa.get(c.PRIORITY_KEY) or 3
    base = [vis.eq(c.SA_MODEL, str(model))]
    if tiers:  # only the tiers that wait on the same GPU pool compete with this job
        base.append(vis.one_of(c.SA_TIER, tiers))
    earlier = (
        f"({c.SA_PRIORITY} < {vis.literal(prio)} OR ({vis.eq(c.SA_PRIORITY, prio)} AND "
        f"StartTime < {vis.literal(ex.start_time)}))"
    )
    ahead = (
        await client.count_workflows(
            vis.jobs(*base, vis.eq(c.SA_STATUS, c.Status.QUEUED), earlier, status="Running")
        )
    ).count
    running = (
        await client.count_workflows(
            vis.jobs(*base, vis.eq(c.SA_STATUS, c.Status.IN_PROGRESS), status="Running")
        )
    ).count
    avg = await average_generation_seconds(client, str(model))
    workers = await _pollers(client, gpu_queue) if gpu_queue else 1
    wait = (ahead + running) / max(1, workers) * avg
    return ahead, int(time.time() + wait)


# model -> (monotonic time, average generation seconds): one list call per model and period,
# not one per GET of every queued job.
_AVG_CACHE: dict[str, tuple[float, float]] = {}


AVG_CACHE_S = 30.0


async def average_generation_seconds(client: Client, model: str) -> float:
    """Mean GPU time of the model's last 20 completed jobs (0 if none yet)."""
    cached = _AVG_CACHE.get(model)
    if cached is not None and time.monotonic() - cached[0] < AVG_CACHE_S:
        return cached[1]
    seconds: list[float] = []
    query = vis.jobs(vis.eq(c.SA_MODEL, model), f"{c.SA_GEN_SECONDS} > 0", status="Completed")
    async for done in client.list_workflows(query, limit=20):
        value = done.typed_search_attributes.get(c.GEN_SECONDS_KEY)
        if value:
            seconds.append(value)
    avg = sum(seconds) / len(seconds) if seconds else 0.0
    _AVG_CACHE[model] = (time.monotonic(), avg)
    return avg


async def _pollers(client: Client, queue: str) -> int:
    """Idle GPU workers polling `queue` (at least 1: busy workers do not poll)."""
    try:
        return await _fresh(client, queue) or 1
    except RPCError:
        return 1


async def _fresh(client: Client, queue: str) -> int:
    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        ),
        timeout=API_RPC_TIMEOUT,
    )
    return fresh_pollers(resp.pollers)


# queue -> (monotonic time, whether any worker polled it lately): one look per queue and
# period, not one per submission.
_POLLED: dict[str, tuple[float, bool]] = {}
POLLED_CACHE_S = 2.0


async def recently_polled(client: Client, queue: str) -> bool:
    """Whether a GPU worker polled `queue` within POLLER_FRESH_S (True if that cannot be told:
    the job then waits the cold-start bound before it is offered elsewhere)."""
    cached = _POLLED.get(queue)
    if cached is not None and time.monotonic() - cached[0] < POLLED_CACHE_S:
        return cached[1]
    try:
        polled = await _fresh(client, queue) > 0
    except RPCError:
        return True
    _POLLED[queue] = (time.monotonic(), polled)
    return polled


# An idle worker long-polls for up to a minute, then polls again at once; Temporal keeps
# listing a poller for minutes after it stopped (dead, or busy with a job).
POLLER_FRESH_S = 90.0


def fresh_pollers(pollers: Sequence[PollerInfo]) -> int:
    """Distinct workers among `pollers` that polled within POLLER_FRESH_S: the idle ones."""
    since = time.time() - POLLER_FRESH_S
    return len(
        {p.identity for p in pollers if p.last_access_time.ToDatetime(UTC).timestamp() >= since}
    )
