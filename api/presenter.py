"""The Video object of a job: its memo and visibility record, plus its live workflow state.

A running job answers the `status` query (its phase, step, attempt); a closed one is read from
its history (result or failure) without any worker. A queued job also gets its position and
estimated start (api.queue).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import structlog
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.client import WorkflowExecution as Execution
from temporalio.common import QueryRejectCondition
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from api.queue import queue_estimate
from api.schemas import Video, VideoError
from videogen import contracts as c

# A worker that does not answer the status query in this long (none polling yet, say right
# after Temporal restarted) leaves the read to visibility's status: every read answers within
# about 2 s (docs/operations.md, "Health, outages and shutdown").
QUERY_TIMEOUT = timedelta(seconds=2)
# A closed job's result is one history read; the API's client bounds other calls likewise
# (videogen.temporal.API_RPC_TIMEOUT), but not this one, which the SDK makes a long poll.
RESULT_TIMEOUT = timedelta(seconds=1.5)
# The queue estimate is optional: it never holds a read of a queued job for long.
ESTIMATE_TIMEOUT_S = 1.5
log = structlog.get_logger(__name__)


async def to_video(
    handle: WorkflowHandle,
    ex: Execution,
    *,
    live: bool = True,
    client: Client | None = None,
    queue_tiers: list[str] | None = None,
) -> Video:
    """Build the Video object from the execution, plus (if `live`) the workflow's own state;
    with a `client`, a queued job also gets its queue position and estimated start."""
    memo = await ex.memo()
    video = Video(
        id=ex.id,
        status=c.Status.QUEUED,
        created_at=int(ex.start_time.timestamp()),
        completed_at=int(ex.close_time.timestamp()) if ex.close_time else None,
        model=memo["model"],
        model_version=memo.get("model_version"),
        prompt=memo["prompt"],
        seconds=str(memo["seconds"]),
        size=memo["size"],
        seed=memo["seed"],
        negative_prompt=memo.get("negative_prompt", ""),
        metadata=memo.get("metadata") or {},
        total_steps=memo["num_inference_steps"],
    )
    if memo.get("deadline_s"):
        video.deadline_at = int(ex.start_time.timestamp() + memo["deadline_s"])
    status = ex.status
    if status == WorkflowExecutionStatus.RUNNING:
        state = await query_state(handle) if live else None
        if state is None:  # no worker answered: fall back to what visibility knows
            known = ex.typed_search_attributes.get(c.STATUS_KEY) or c.Status.QUEUED
            video.status = c.Status.QUEUED if known == c.Status.QUEUED else c.Status.IN_PROGRESS
        else:
            apply_state(video, state)
        if client is not None and video.status == c.Status.QUEUED:
            try:
                video.queue_position, video.estimated_start_at = await asyncio.wait_for(
                    queue_estimate(client, ex, memo.get("gpu_task_queue"), queue_tiers),
                    ESTIMATE_TIMEOUT_S,
                )
            except (RPCError, TimeoutError) as err:  # optional: never fail the read for it
                log.warning("queue estimate unavailable", job_id=ex.id, error=str(err))
    elif status == WorkflowExecutionStatus.COMPLETED:
        video.status, video.phase, video.progress = c.Status.COMPLETED, c.Phase.COMPLETED, 100
        if memo.get("retention_s") and ex.close_time:
            video.expires_at = int(ex.close_time.timestamp() + memo["retention_s"])
        video.step = video.total_steps
        if live:  # the result is in the history: one read, no worker needed
            result: c.JobResult = await handle.result(rpc_timeout=RESULT_TIMEOUT)
            video.attempt = result.attempt
            video.resumed_from_step = result.resumed_from_step
            video.wasted_steps = result.wasted_steps
            video.yields = result.yields
            video.frames_sha256 = result.video.frames_sha256 or None
            video.video_sha256 = result.video.video_sha256
    elif status == WorkflowExecutionStatus.CANCELED:
        video.status, video.phase = c.Status.CANCELLED, c.Phase.CANCELLED
    else:
        video.status, video.phase = c.Status.FAILED, c.Phase.FAILED
        video.error = await _failure(handle, status)
    return video


# How long a poller should wait before it asks again (the `openai-poll-after-ms` header, which
# the OpenAI SDK's poll helper obeys), by phase: a queued job changes when it starts, a render
# every step, the short phases at its end soon.
POLL_AFTER_MS = {
    c.Phase.QUEUED: 2000,
    c.Phase.STARTING: 1000,
    c.Phase.RESUMING: 1000,
    c.Phase.DENOISING: 1000,
    c.Phase.DECODING: 500,
    c.Phase.ENCODING: 500,
}
POLL_AFTER_MAX_MS = 10_000
POLL_AFTER_HEADER = "openai-poll-after-ms"


def poll_after_ms(video: Video, now: float | None = None) -> int | None:
    """Milliseconds until the next useful poll of an unfinished job; None once it is finished.
    A queued job with an estimated start is asked again halfway there (1-10 s)."""
    if video.status not in (c.Status.QUEUED, c.Status.IN_PROGRESS):
        return None
    if video.status == c.Status.QUEUED and video.estimated_start_at:
        half = (video.estimated_start_at - (now or time.time())) * 1000 / 2
        return int(min(POLL_AFTER_MAX_MS, max(1000, half)))
    return POLL_AFTER_MS.get(video.phase, 1000)


def just_started(req: c.VideoRequest) -> Video:
    """The Video object of the job this request has just started, as a read of it would show
    it now, without the read: one Temporal round trip less per submission. `created_at` is
    this replica's clock, the workflow's start time is the server's."""
    now = int(time.time())
    return Video(
        id=req.job_id,
        status=c.Status.QUEUED,
        created_at=now,
        deadline_at=now + int(req.deadline_s) if req.deadline_s else None,
        model=req.requested_model or req.model,
        model_version=c.model_ref(req.model, req.model_version),
        prompt=req.prompt,
        seconds=str(req.seconds),
        size=f"{req.width}x{req.height}",
        seed=req.seed,
        negative_prompt=req.negative_prompt,
        metadata=req.metadata,
        total_steps=req.num_inference_steps,
    )


async def query_state(handle: WorkflowHandle) -> c.JobStatus | None:
    """The running workflow's live state; None if it is closed (no replay of a closed job) or
    no worker answered in time."""
    try:
        return await handle.query(
            c.QUERY_STATUS,
            result_type=c.JobStatus,
            reject_condition=QueryRejectCondition.NOT_OPEN,
            rpc_timeout=QUERY_TIMEOUT,
        )
    except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
        return None


def apply_state(video: Video, s: c.JobStatus) -> None:
    # A closing workflow may still answer with its final status: it is in progress until closed.
    video.status = c.Status.QUEUED if s.status == c.Status.QUEUED else c.Status.IN_PROGRESS
    video.phase = c.Phase(s.phase)
    video.progress = s.progress
    video.step = s.step
    video.total_steps = s.total_steps or video.total_steps
    video.attempt = s.attempt
    video.resumed_from_step = s.resumed_from_step
    video.wasted_steps = s.wasted_steps
    video.yields = s.yields


async def _failure(handle: WorkflowHandle, status: WorkflowExecutionStatus | None) -> VideoError:
    if status == WorkflowExecutionStatus.TERMINATED:
        return VideoError(code="terminated", message="the job was terminated by an operator")
    if status == WorkflowExecutionStatus.TIMED_OUT:
        return VideoError(code="timed_out", message="the job ran past its time limit")
    try:
        await handle.result(rpc_timeout=RESULT_TIMEOUT)
    except WorkflowFailureError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError):
            return VideoError(code=cause.type or "generation_failed", message=cause.message)
        return VideoError(code="generation_failed", message=str(cause or err))
    return VideoError(code="generation_failed", message="the job failed")
