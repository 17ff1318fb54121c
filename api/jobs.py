"""Jobs as Temporal sees them: start, describe, query, list, cancel, delete.

The API keeps no state of its own: a job *is* its workflow. The request is kept in the
workflow's memo and the owner in search attributes, so a job can be described (and listed)
from Temporal alone, even while no worker is running.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from datetime import timedelta

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.client import (
    WorkflowExecution as Execution,
)
from temporalio.common import (
    Priority,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.errors import ApiError
from api.schemas import Video, VideoError
from videogen import contracts as c
from videogen.settings import ApiKey
from videogen.storage import ObjectStore

USER_KEY = SearchAttributeKey.for_keyword(c.SA_USER)
TIER_KEY = SearchAttributeKey.for_keyword(c.SA_TIER)
MODEL_KEY = SearchAttributeKey.for_keyword(c.SA_MODEL)
STATUS_KEY = SearchAttributeKey.for_keyword(c.SA_STATUS)

# Lower runs first (Temporal's default range is 1-5, default 3).
TIER_PRIORITY = {"internal": 1, "paid": 2, "free": 4}
QUERY_TIMEOUT = timedelta(seconds=5)


def new_job_id() -> str:
    return f"video_{uuid.uuid4().hex}"


async def start(client: Client, req: c.VideoRequest, key: ApiKey) -> None:
    memo = {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "model": req.model,
        "seconds": req.seconds,
        "size": f"{req.width}x{req.height}",
        "seed": req.seed,
        "num_inference_steps": req.num_inference_steps,
        "metadata": req.metadata,
    }
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
        ]),
        # Inherited by the workflow's activities: tiers order the GPU queue, users share it.
        priority=Priority(priority_key=TIER_PRIORITY.get(key.tier, 3), fairness_key=key.user),
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


async def to_video(handle: WorkflowHandle, ex: Execution, *, live: bool = True) -> Video:
    """Build the Video object from the execution, plus (if `live`) the workflow's own state."""
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
        state = await _query(handle) if live else None
        if state is None:  # no worker answered: fall back to what visibility knows
            video.status = ex.typed_search_attributes.get(STATUS_KEY) or c.QUEUED
            if video.status not in (c.QUEUED, c.IN_PROGRESS):
                video.status = c.IN_PROGRESS
            return video
        _apply_state(video, state)
    elif status == WorkflowExecutionStatus.COMPLETED:
        video.status, video.phase, video.progress = c.COMPLETED, c.COMPLETED, 100
        video.step = video.total_steps
        if live:  # the result is in the history: one read, no worker needed
            result: c.JobResult = await handle.result()
            video.attempt = result.attempt
            video.resumed_from_step = result.resumed_from_step
            video.wasted_steps = result.wasted_steps
    elif status == WorkflowExecutionStatus.CANCELED:
        video.status = video.phase = c.CANCELLED
    else:
        video.status = video.phase = c.FAILED
        video.error = await _failure(handle, status)
    return video


async def _query(handle: WorkflowHandle) -> c.JobStatus | None:
    try:
        return await handle.query(c.QUERY_STATUS, result_type=c.JobStatus,
                                  rpc_timeout=QUERY_TIMEOUT)
    except RPCError:
        return None


def _apply_state(video: Video, s: c.JobStatus) -> None:
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
    user = key.user.replace("\\", "\\\\").replace('"', '\\"')
    it = client.list_workflows(
        f'{c.SA_USER} = "{user}" AND WorkflowType = "{c.WORKFLOW_NAME}"',
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

