"""Admission at the edge: idempotent submission and rate limits, with Temporal as the only state.

Several API replicas enforce the same limits because the counts come from Temporal's
visibility store (search attributes on every job), not from process memory; idempotency comes
from the workflow id, derived from user + key, and Temporal's id-conflict policy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.client import WorkflowExecution as Execution
from temporalio.service import RPCError, RPCStatusCode

from api import jobs
from api.errors import (
    ConflictError,
    InvalidRequestError,
    RateLimitedError,
    UnavailableError,
)
from api.schemas import CreateVideoBody
from videogen import contracts as c
from videogen import visibility as vis
from videogen.settings import ApiKey, TierPolicy
from videogen.storage import ObjectStore

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255
# A concurrency limit frees up when a job ends, which nobody can predict: a polite hint.
CONCURRENT_RETRY_AFTER_S = 15

TRANSIENT = (
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
)

RATE_LIMITED = Counter("videogen_rate_limited_total", "Submissions refused with 429", ["limit"])


def idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable() or not key.isascii():
        raise InvalidRequestError(
            f"{IDEMPOTENCY_HEADER}: 1-{MAX_IDEMPOTENCY_KEY} printable "
            "ASCII characters (a UUID is a good choice)",
            param=IDEMPOTENCY_HEADER,
            code="invalid_idempotency_key",
        )
    return key


def idempotent_job_id(user: str, key: str) -> str:
    """The job id for (user, key): the same for every retry, different for every user."""
    return "video_" + hashlib.sha256(f"{user}\0{key}".encode()).hexdigest()[:32]


def fingerprint(body: CreateVideoBody) -> str:
    """What a retry with the same Idempotency-Key must repeat: the request as sent."""
    data = body.model_dump(mode="json", exclude_none=True)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


async def existing(
    client: Client, store: ObjectStore, job_id: str, key: ApiKey, expected: str
) -> tuple[WorkflowHandle, Execution] | None:
    """The job an earlier request with this Idempotency-Key started, or None if there is none.

    409 if that request differed (same key, other body) or its video was deleted.
    """
    handle = client.get_workflow_handle(job_id, result_type=c.JobResult)
    try:
        desc = await handle.describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        if await jobs.is_deleted(store, job_id):
            raise _deleted() from None
        return None
    if desc.status != WorkflowExecutionStatus.RUNNING and await jobs.is_deleted(store, job_id):
        raise _deleted()
    memo = await desc.memo()
    if memo.get("request_fingerprint") != expected:
        raise ConflictError(
            f"{IDEMPOTENCY_HEADER} was already used for a different request "
            f"(video {job_id}); use a new key for a new request",
            param=IDEMPOTENCY_HEADER,
            code="idempotency_key_reused",
        )
    return handle, desc


def _deleted() -> ConflictError:
    return ConflictError(
        f"the video this {IDEMPOTENCY_HEADER} created has been deleted; use a new key",
        param=IDEMPOTENCY_HEADER,
        code="idempotency_key_reused",
    )


async def enforce_limits(client: Client, key: ApiKey, policy: TierPolicy) -> None:
    """429 with Retry-After if a submission now would exceed one of the tier's limits."""
    user = vis.eq(c.SA_USER, key.user)
    tier = vis.eq(c.SA_TIER, key.tier)
    since = datetime.now(UTC) - timedelta(minutes=1)
    recent = f"StartTime > {vis.literal(since)}"
    checks = [
        (
            "user_concurrent",
            policy.user_concurrent,
            vis.jobs(user, status="Running"),
            f"{{n}} queued or running jobs for user {key.user!r}",
        ),
        (
            "user_per_minute",
            policy.user_per_minute,
            vis.jobs(user, recent),
            f"{{n}} submissions per minute for user {key.user!r}",
        ),
        (
            "tier_concurrent",
            policy.tier_concurrent,
            vis.jobs(tier, status="Running"),
            f"{{n}} queued or running jobs for tier {key.tier!r}",
        ),
        (
            "tier_per_minute",
            policy.tier_per_minute,
            vis.jobs(tier, recent),
            f"{{n}} submissions per minute for tier {key.tier!r}",
        ),
    ]
    # All counts at once (one round trip of latency, not four), judged in the order above.
    active = [check for check in checks if check[1]]
    try:
        counts = await asyncio.gather(*(client.count_workflows(q) for _, _, q, _ in active))
        for (name, limit, query, what), count in zip(active, counts, strict=True):
            if count.count < limit:
                continue
            retry = (
                await _per_minute_retry(client, query, since, count.count - limit)
                if name.endswith("per_minute")
                else CONCURRENT_RETRY_AFTER_S
            )
            RATE_LIMITED.labels(limit=name).inc()
            raise RateLimitedError(
                f"rate limit reached: {what.format(n=limit)} (tier {key.tier!r}, limit "
                f"{name}); retry after {retry} s",
                code=name,
                retry_after_s=retry,
            )
    except RPCError as err:
        if err.status in TRANSIENT:  # the client should retry, not see a 500
            raise UnavailableError(
                f"cannot check rate limits right now ({err.message}); retry shortly",
                code="service_unavailable",
                retry_after_s=2,
            ) from None
        raise


async def _per_minute_retry(client: Client, query: str, since: datetime, over: int) -> int:
    """Seconds until enough submissions have left the window for one more (`over` is how many
    the window holds beyond the limit: visibility lag can let a few through)."""
    starts = sorted([ex.start_time async for ex in client.list_workflows(query, limit=1000)])
    if not starts:
        return 1
    leaving = starts[min(max(over, 0), len(starts) - 1)]
    return max(1, math.ceil((leaving - since).total_seconds()))
