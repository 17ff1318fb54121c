"""Jobs as Temporal sees them: start, find the caller's own, list, cancel, delete.

The API keeps no state of its own: a job *is* its workflow. The request is kept in the
workflow's memo and the owner in search attributes, so a job can be described (and listed)
from Temporal alone, even while no worker is running.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import uuid
from typing import Any

import structlog
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.client import WorkflowExecution as Execution
from temporalio.common import (
    Priority,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.errors import ConflictError, InvalidRequestError, NotFoundError
from api.presenter import to_video
from api.schemas import Video
from videogen import contracts as c
from videogen import visibility as vis
from videogen.settings import DEFAULT_TIERS, ApiKey, TierPolicy
from videogen.storage import ObjectStore
from videogen.temporal import API_RPC_TIMEOUT

log = structlog.get_logger(__name__)


def new_job_id() -> str:
    return f"video_{uuid.uuid4().hex}"


async def start(
    client: Client,
    req: c.VideoRequest,
    key: ApiKey,
    policy: TierPolicy | None = None,
    *,
    fingerprint: str = "",
    idempotent: bool = False,
) -> None:
    """Start the job's workflow. `idempotent`: the id is derived from an Idempotency-Key, and a
    concurrent or repeated start of the same id joins the existing workflow instead."""
    policy = policy or DEFAULT_TIERS.get(key.tier) or TierPolicy()
    memo = {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        # As asked (an alias, say); `model_version` is what it ran on.
        "model": req.requested_model or req.model,
        "model_version": c.model_ref(req.model, req.model_version),
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
    if req.deadline_s:
        memo["deadline_s"] = req.deadline_s
    policies: dict[str, Any] = {}
    if idempotent:
        # USE_EXISTING joins a running workflow of this id (concurrent retries of one request);
        # REJECT_DUPLICATE refuses to run a closed one again (a late retry).
        policies = {
            "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
            "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        }
    try:
        await _start(client, req, key, policy, memo, policies)
    except WorkflowAlreadyStartedError:
        if not idempotent:
            raise


async def _start(
    client: Client,
    req: c.VideoRequest,
    key: ApiKey,
    policy: TierPolicy,
    memo: dict[str, object],
    policies: dict[str, Any],
) -> None:
    await client.start_workflow(
        c.WORKFLOW_NAME,
        req,
        id=req.job_id,
        task_queue=req.cpu_task_queue,
        memo=memo,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(c.USER_KEY, key.user),
                SearchAttributePair(c.TIER_KEY, key.tier),
                SearchAttributePair(c.MODEL_KEY, req.model),
                SearchAttributePair(c.STATUS_KEY, c.Status.QUEUED),
                SearchAttributePair(c.PRIORITY_KEY, policy.priority),
            ]
        ),
        # Inherited by the workflow's activities: tiers order the GPU queue, users share it.
        priority=Priority(
            priority_key=policy.priority,
            fairness_key=key.user,
            fairness_weight=policy.fairness_weight,
        ),
        **policies,
    )


async def owned_handle(
    client: Client, store: ObjectStore, job_id: str, key: ApiKey
) -> tuple[WorkflowHandle, Execution]:
    """The job's handle and description; 404 if it does not exist or belongs to someone else."""
    not_found = NotFoundError(
        f"no video with id {job_id!r}", param="video_id", code="video_not_found"
    )
    if not job_id.startswith("video_") or len(job_id) > 100:
        raise not_found
    handle = client.get_workflow_handle(job_id, result_type=c.JobResult)
    try:
        desc = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise not_found from None
        raise
    if desc.typed_search_attributes.get(c.USER_KEY) != key.user:
        raise not_found  # never reveal that another user's job exists
    if desc.status != WorkflowExecutionStatus.RUNNING and await is_deleted(store, job_id):
        raise not_found
    return handle, desc


async def is_deleted(store: ObjectStore, job_id: str) -> bool:
    return await asyncio.to_thread(store.exists, c.tombstone_key(job_id))


CURSOR_PREFIX = "c2."


def _cursor_mac(secret: str, user: str, token: bytes) -> str:
    # Keyed and bound to the user: a forged or borrowed cursor is refused here, at once, before
    # Temporal's visibility store spends seconds on it.
    key = hmac.new(secret.encode(), b"videogen list cursor", hashlib.sha256).digest()
    mac = hmac.new(key, user.encode() + b"\0" + token, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def encode_cursor(token: bytes | None, secret: str, user: str) -> str | None:
    if not token:
        return None
    body = base64.urlsafe_b64encode(token).decode()
    return f"{CURSOR_PREFIX}{body}.{_cursor_mac(secret, user, token)}"


def decode_cursor(cursor: str | None, secret: str, user: str) -> bytes | None:
    if not cursor:
        return None
    bad = InvalidRequestError(
        "after: not a cursor returned by this API to you; pass the previous page's next_cursor",
        param="after",
        code="invalid_cursor",
    )
    body, _, mac = cursor.removeprefix(CURSOR_PREFIX).partition(".")
    if not cursor.startswith(CURSOR_PREFIX) or not mac:
        raise bad
    try:
        token = base64.b64decode(body, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise bad from None
    if not hmac.compare_digest(mac.encode(), _cursor_mac(secret, user, token).encode()):
        raise bad
    return token


async def list_page(
    client: Client,
    store: ObjectStore,
    key: ApiKey,
    limit: int,
    after: str | None,
    *,
    cursor_secret: str,
) -> tuple[list[Video], str | None]:
    it = client.list_workflows(
        vis.jobs(vis.eq(c.SA_USER, key.user)),
        page_size=limit,
        next_page_token=decode_cursor(after, cursor_secret, key.user),
    )
    try:
        await it.fetch_next_page(page_size=limit)
    except RPCError as err:
        # A well-formed but forged or stale token is rejected by the server as INVALID_ARGUMENT
        # or, by the SQL visibility store, as UNKNOWN.
        if after and err.status in (RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.UNKNOWN):
            raise InvalidRequestError(
                "after: invalid or expired cursor", param="after", code="invalid_cursor"
            ) from None
        raise
    videos = []
    for ex in it.current_page or []:
        if ex.status != WorkflowExecutionStatus.RUNNING and await is_deleted(store, ex.id):
            continue
        handle = client.get_workflow_handle(ex.id, run_id=ex.run_id, result_type=c.JobResult)
        # A listing must not fan out one query per running job: visibility has the status.
        videos.append(await to_video(handle, ex, live=False))
    return videos, encode_cursor(it.next_page_token, cursor_secret, key.user)


async def cancel(handle: WorkflowHandle, ex: Execution) -> None:
    if ex.status != WorkflowExecutionStatus.RUNNING:
        raise ConflictError(
            f"video {ex.id} has already finished; only a queued or "
            "in-progress video can be cancelled",
            code="video_not_cancellable",
        )
    await handle.cancel()


async def delete_execution(client: Client, ex: Execution) -> None:
    await client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=ex.id, run_id=ex.run_id),
        ),
        # Direct service calls get no default timeout from the client (videogen.temporal).
        timeout=API_RPC_TIMEOUT,
    )
