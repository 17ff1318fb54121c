"""Jobs as Temporal sees them: start, describe, query, list, cancel, delete.

The API keeps no state of its own: a job *is* its workflow. The request is kept in the
workflow's memo and the owner in search attributes, so a job can be described (and listed)
from Temporal alone, even while no worker is running.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, timedelta

import structlog
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import PollerInfo, TaskQueue
from temporalio.api.workflowservice.v1 import (
    DeleteWorkflowExecutionRequest,
    DescribeTaskQueueRequest,
)
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.client import (
    WorkflowExecution as Execution,
)
from temporalio.common import (
    Priority,
    QueryRejectCondition,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.errors import ApiError
from api.schemas import Video, VideoError
from videogen import contracts as c
from videogen import visibility as vis
from videogen.settings import DEFAULT_TIERS, ApiKey, TierPolicy
from videogen.storage import ObjectStore

USER_KEY = SearchAttributeKey.for_keyword(c.SA_USER)
TIER_KEY = SearchAttributeKey.for_keyword(c.SA_TIER)
MODEL_KEY = SearchAttributeKey.for_keyword(c.SA_MODEL)
STATUS_KEY = SearchAttributeKey.for_keyword(c.SA_STATUS)
PRIORITY_KEY = SearchAttributeKey.for_int(c.SA_PRIORITY)
GEN_SECONDS_KEY = SearchAttributeKey.for_float(c.SA_GEN_SECONDS)

QUERY_TIMEOUT = timedelta(seconds=5)
log = structlog.get_logger(__name__)


def new_job_id() -> str:
    return f"video_{uuid.uuid4().hex}"


async def start(client: Client, req: c.VideoRequest, key: ApiKey,
                policy: TierPolicy | None = None, *, fingerprint: str = "",
                idempotent: bool = False) -> None:
    """Start the job's workflow. `idempotent`: the id is derived from an Idempotency-Key, and a
    concurrent or repeated start of the same id joins the existing workflow instead."""
    policy = policy or DEFAULT_TIERS.get(key.tier) or TierPolicy()
    memo = {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "model": req.model,
        "seconds": req.seconds,
        "size": f"{req.width}x{req.height}",
        "seed": req.seed,
        "num_inference_steps": req.num_inference_steps,
        "metadata": req.metadata,
        "request_fingerprint": fingerprint,
        "gpu_task_queue": req.gpu_task_queue,
        "retention_s": req.retention_s,
        "webhook_url": req.webhook_url,
    }
    if idempotent:
        # USE_EXISTING joins a running workflow of this id (concurrent retries of one request);
        # REJECT_DUPLICATE refuses to run a closed one again (a late retry).
        policies = {"id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
                    "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE}
    else:
        policies = {}
    try:
        await _start(client, req, key, policy, memo, policies)
    except WorkflowAlreadyStartedError:
        if not idempotent:
            raise


async def _start(client: Client, req: c.VideoRequest, key: ApiKey, policy: TierPolicy,
                 memo: dict[str, object], policies: dict[str, object]) -> None:
    await client.start_workflow(
        c.WORKFLOW_NAME,
        req,
        id=req.job_id,
        task_queue=req.cpu_task_queue,
        memo=memo,
        search_attributes=TypedSearchAttributes([
            SearchAttributePair(USER_KEY, key.user),
            SearchAttributePair(TIER_KEY, key.tier),
            SearchAttributePair(MODEL_KEY, req.model),
            SearchAttributePair(STATUS_KEY, c.QUEUED),
            SearchAttributePair(PRIORITY_KEY, policy.priority),
        ]),
        # Inherited by the workflow's activities: tiers order the GPU queue, users share it.
        priority=Priority(priority_key=policy.priority, fairness_key=key.user,
                          fairness_weight=policy.fairness_weight),
        **policies,  # type: ignore[arg-type]
    )


async def owned_handle(
    client: Client, store: ObjectStore, job_id: str, key: ApiKey
) -> tuple[WorkflowHandle, Execution]:
    """The job's handle and description; 404 if it does not exist or belongs to someone else."""
    not_found = ApiError(404, f"no video with id {job_id!r}", param="video_id",
                         code="video_not_found")
    if not job_id.startswith("video_") or len(job_id) > 100:
        raise not_found
    handle = client.get_workflow_handle(job_id, result_type=c.JobResult)
    try:
        desc = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise not_found from None
        raise
    if desc.typed_search_attributes.get(USER_KEY) != key.user:
        raise not_found  # never reveal that another user's job exists
    if desc.status != WorkflowExecutionStatus.RUNNING and await is_deleted(store, job_id):
        raise not_found
    return handle, desc


async def is_deleted(store: ObjectStore, job_id: str) -> bool:
    return await asyncio.to_thread(store.exists, c.tombstone_key(job_id))


async def to_video(handle: WorkflowHandle, ex: Execution, *, live: bool = True,
                   client: Client | None = None, queue_tiers: list[str] | None = None) -> Video:
    """Build the Video object from the execution, plus (if `live`) the workflow's own state;
    with a `client`, a queued job also gets its queue position and estimated start."""
    memo = await ex.memo()
    video = Video(
        id=ex.id,
        status=c.QUEUED,
        created_at=int(ex.start_time.timestamp()),
        completed_at=int(ex.close_time.timestamp()) if ex.close_time else None,
        model=memo["model"],
        prompt=memo["prompt"],
        seconds=str(memo["seconds"]),
        size=memo["size"],
        seed=memo["seed"],
        negative_prompt=memo.get("negative_prompt", ""),
        metadata=memo.get("metadata") or {},
        total_steps=memo["num_inference_steps"],
    )
    status = ex.status
    if status == WorkflowExecutionStatus.RUNNING:
        state = await query_state(handle) if live else None
        if state is None:  # no worker answered: fall back to what visibility knows
            video.status = ex.typed_search_attributes.get(STATUS_KEY) or c.QUEUED
            if video.status not in (c.QUEUED, c.IN_PROGRESS):
                video.status = c.IN_PROGRESS
        else:
            apply_state(video, state)
        if client is not None and video.status == c.QUEUED:
            try:
                video.queue_position, video.estimated_start_at = await queue_estimate(
                    client, ex, memo.get("gpu_task_queue"), queue_tiers)
            except RPCError as err:  # an estimate is optional: never fail the read for it
                log.warning("queue estimate unavailable", job_id=ex.id, error=str(err))
    elif status == WorkflowExecutionStatus.COMPLETED:
        video.status, video.phase, video.progress = c.COMPLETED, c.COMPLETED, 100
        if memo.get("retention_s") and ex.close_time:
            video.expires_at = int(ex.close_time.timestamp() + memo["retention_s"])
        video.step = video.total_steps
        if live:  # the result is in the history: one read, no worker needed
            result: c.JobResult = await handle.result()
            video.attempt = result.attempt
            video.resumed_from_step = result.resumed_from_step
            video.wasted_steps = result.wasted_steps
            video.frames_sha256 = result.video.frames_sha256 or None
            video.video_sha256 = result.video.video_sha256
    elif status == WorkflowExecutionStatus.CANCELED:
        video.status = video.phase = c.CANCELLED
    else:
        video.status = video.phase = c.FAILED
        video.error = await _failure(handle, status)
    return video


async def queue_estimate(client: Client, ex: Execution, gpu_queue: str | None,
                         tiers: list[str] | None = None) -> tuple[int, int]:
    """(jobs ahead of this queued one, estimated start as a Unix time).

    Ahead: queued jobs of the same model and pool (`tiers` sharing it) with a higher priority,
    or the same priority and an earlier start (fairness may interleave users of one priority:
    an estimate). The ETA spreads
    those and the jobs running now over the GPU workers polling the queue, at the average
    generation time of the model's recent completed jobs.
    """
    sa = ex.typed_search_attributes
    model = sa.get(MODEL_KEY)
    prio = sa.get(PRIORITY_KEY) or 3
    base = [vis.eq(c.SA_MODEL, str(model))]
    if tiers:  # only the tiers that wait on the same GPU pool compete with this job
        base.append(vis.one_of(c.SA_TIER, tiers))
    earlier = (f"({c.SA_PRIORITY} < {vis.literal(prio)} OR ({vis.eq(c.SA_PRIORITY, prio)} AND "
               f"StartTime < {vis.literal(ex.start_time)}))")
    ahead = (await client.count_workflows(vis.jobs(
        *base, vis.eq(c.SA_STATUS, c.QUEUED), earlier, status="Running"))).count
    running = (await client.count_workflows(vis.jobs(
        *base, vis.eq(c.SA_STATUS, c.IN_PROGRESS), status="Running"))).count
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
        value = done.typed_search_attributes.get(GEN_SECONDS_KEY)
        if value:
            seconds.append(value)
    avg = sum(seconds) / len(seconds) if seconds else 0.0
    _AVG_CACHE[model] = (time.monotonic(), avg)
    return avg


async def _pollers(client: Client, queue: str) -> int:
    """Idle GPU workers polling `queue` (at least 1: busy workers do not poll)."""
    try:
        resp = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY))
    except RPCError:
        return 1
    return fresh_pollers(resp.pollers) or 1


# An idle worker long-polls for up to a minute, then polls again at once; Temporal keeps
# listing a poller for minutes after it stopped (dead, or busy with a job).
POLLER_FRESH_S = 90.0


def fresh_pollers(pollers: Sequence[PollerInfo]) -> int:
    """Distinct workers among `pollers` that polled within POLLER_FRESH_S: the idle ones."""
    since = time.time() - POLLER_FRESH_S
    return len({p.identity for p in pollers
                if p.last_access_time.ToDatetime(UTC).timestamp() >= since})


async def query_state(handle: WorkflowHandle) -> c.JobStatus | None:
    """The running workflow's live state; None if it is closed (no replay of a closed job) or
    no worker answered in time."""
    try:
        return await handle.query(c.QUERY_STATUS, result_type=c.JobStatus,
                                  reject_condition=QueryRejectCondition.NOT_OPEN,
                                  rpc_timeout=QUERY_TIMEOUT)
    except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
        return None


def apply_state(video: Video, s: c.JobStatus) -> None:
    video.status = s.status if s.status in (c.QUEUED, c.IN_PROGRESS) else c.IN_PROGRESS
    video.phase = s.phase
    video.progress = s.progress
    video.step = s.step
    video.total_steps = s.total_steps or video.total_steps
    video.attempt = s.attempt
    video.resumed_from_step = s.resumed_from_step
    video.wasted_steps = s.wasted_steps


async def _failure(handle: WorkflowHandle, status: WorkflowExecutionStatus | None) -> VideoError:
    if status == WorkflowExecutionStatus.TERMINATED:
        return VideoError(code="terminated", message="the job was terminated by an operator")
    if status == WorkflowExecutionStatus.TIMED_OUT:
        return VideoError(code="timed_out", message="the job ran past its time limit")
    try:
        await handle.result()
    except WorkflowFailureError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError):
            return VideoError(code=cause.type or "generation_failed", message=cause.message)
        return VideoError(code="generation_failed", message=str(cause or err))
    return VideoError(code="generation_failed", message="the job failed")


CURSOR_PREFIX = "c1."


def encode_cursor(token: bytes | None) -> str | None:
    return CURSOR_PREFIX + base64.urlsafe_b64encode(token).decode() if token else None


def decode_cursor(cursor: str | None) -> bytes | None:
    if not cursor:
        return None
    bad = ApiError(400, "after: not a cursor returned by this API; pass the previous page's "
                   "next_cursor", param="after", code="invalid_cursor")
    if not cursor.startswith(CURSOR_PREFIX):
        raise bad
    try:
        return base64.b64decode(cursor[len(CURSOR_PREFIX):], altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise bad from None


async def list_page(client: Client, store: ObjectStore, key: ApiKey, limit: int,
                    after: str | None) -> tuple[list[Video], str | None]:
    it = client.list_workflows(
        vis.jobs(vis.eq(c.SA_USER, key.user)),
        page_size=limit,
        next_page_token=decode_cursor(after),
    )
    try:
        await it.fetch_next_page(page_size=limit)
    except RPCError as err:
        # A well-formed but forged or stale token is rejected by the server as INVALID_ARGUMENT
        # or, by the SQL visibility store, as UNKNOWN.
        if after and err.status in (RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.UNKNOWN):
            raise ApiError(400, "after: invalid or expired cursor", param="after",
                           code="invalid_cursor") from None
        raise
    videos = []
    for ex in it.current_page or []:
        if ex.status != WorkflowExecutionStatus.RUNNING and await is_deleted(store, ex.id):
            continue
        handle = client.get_workflow_handle(ex.id, run_id=ex.run_id, result_type=c.JobResult)
        # A listing must not fan out one query per running job: visibility has the status.
        videos.append(await to_video(handle, ex, live=False))
    return videos, encode_cursor(it.next_page_token)


async def cancel(handle: WorkflowHandle, ex: Execution) -> None:
    if ex.status != WorkflowExecutionStatus.RUNNING:
        raise ApiError(409, f"video {ex.id} has already finished; only a queued or in-progress "
                       "video can be cancelled", code="video_not_cancellable")
    await handle.cancel()


async def delete_execution(client: Client, ex: Execution) -> None:
    await client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=ex.id, run_id=ex.run_id),
        )
    )

