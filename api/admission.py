"""Admission at the edge: idempotent submission and rate limits.

Idempotency comes from the workflow id, derived from user + key, and Temporal's id-conflict
policy. Rate limits come from admission ledgers in the object store, changed by
compare-and-swap (`videogen.quota`): strongly consistent, so a burst across several API
replicas admits no more than the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import weakref

import structlog
from prometheus_client import Counter
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.client import WorkflowExecution as Execution
from temporalio.service import RPCError, RPCStatusCode

from api import jobs
from api.errors import (
    ConflictError,
    InvalidRequestError,
    RateLimitedError,
)
from api.schemas import CreateVideoBody
from videogen import contracts as c
from videogen import quota
from videogen.settings import ApiKey, TierPolicy
from videogen.storage import FileStore, ObjectStore

log = structlog.get_logger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255
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


def quotas(key: ApiKey, policy: TierPolicy) -> list[quota.Quota]:
    """The ledgers a submission by `key` counts in, with the tier's limits."""
    return [
        quota.Quota(quota.Scope.USER, key.user, policy.user_concurrent, policy.user_per_minute),
        quota.Quota(quota.Scope.TIER, key.tier, policy.tier_concurrent, policy.tier_per_minute),
    ]


async def admit(
    client: Client, store: ObjectStore, key: ApiKey, policy: TierPolicy, job_id: str
) -> None:
    """Count the job against its user's and tier's limits (strongly consistent: see
    videogen.quota), or raise 429 with Retry-After. A full concurrency limit is checked once
    against Temporal for jobs that ended without releasing their place (terminated). With the
    store down nothing can be counted: StoreUnavailable becomes a 503 (api.errors)."""
    wanted = quotas(key, policy)
    if not any(q.limited for q in wanted):
        return
    batcher = _batchers.get(store)
    if batcher is None:
        batcher = _batchers[store] = _Batcher()
    try:
        try:
            await batcher.admit(store, job_id, wanted)
        except quota.Refused as refused:
            if not refused.concurrent or not await _reclaim(client, store, refused.quota):
                raise
            await batcher.admit(store, job_id, wanted)
    except quota.Refused as refused:
        raise _rate_limited(refused, key) from None


class _Batcher:
    """Group commit for one store's admissions in this process: requests that arrive while a
    batch is being written go together in the next one (`quota.admit_all`, one update per
    ledger). A burst of one user's POSTs otherwise queues for that ledger's lock one by one,
    each holding it for a thread's several GIL hand-overs."""

    def __init__(self) -> None:
        self._waiting: list[tuple[str, list[quota.Quota], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def admit(self, store: ObjectStore, job_id: str, wanted: list[quota.Quota]) -> None:
        idle = not self._waiting and (self._writer is None or self._writer.done())
        if idle and isinstance(store, FileStore):
            # No one ahead: admitted or refused here and now, without the writer task's
            # round trips through the loop, when the update cannot wait (`_admit_all`).
            outcome = quota.admit_all_now(store, [(job_id, wanted)], time.time())
            if outcome is not None:
                if (refused := outcome[job_id]) is not None:
                    raise refused
                return
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((job_id, wanted, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(store))
        await done

    # The store is an argument, not an attribute: `_batchers` holds its key weakly.
    async def _write(self, store: ObjectStore) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            requests = [(job_id, wanted) for job_id, wanted, _ in batch]
            try:
                outcome = await _admit_all(store, requests)
            except Exception as err:  # the store failed: every request of the batch hears it
                for _, _, done in batch:
                    _settle(done, err)
                continue
            for job_id, _, done in batch:
                _settle(done, outcome[job_id])


async def _admit_all(
    store: ObjectStore, requests: list[tuple[str, list[quota.Quota]]]
) -> dict[str, quota.Refused | None]:
    """`quota.admit_all`, on the event loop when that cannot wait (a FileStore whose ledgers
    no one else holds: a few local syscalls, no fsync, no lock wait), else in a thread. The
    hand-over to a thread and back costs a POST more than the update itself while the loop is
    busy (benchmarks/README.md, admission)."""
    now = time.time()
    if isinstance(store, FileStore):
        outcome = quota.admit_all_now(store, requests, now)
        if outcome is not None:
            return outcome
    return await asyncio.to_thread(quota.admit_all, store, requests, now)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # its request was cancelled meanwhile
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


_batchers: weakref.WeakKeyDictionary[ObjectStore, _Batcher] = weakref.WeakKeyDictionary()


async def give_back(store: ObjectStore, key: ApiKey, policy: TierPolicy, job_id: str) -> None:
    """Undo `admit` for a job whose start definitely did not happen."""
    for q in quotas(key, policy):
        if q.limited:
            await asyncio.to_thread(quota.forget, store, q, {job_id}, from_recent=True)


def _rate_limited(refused: quota.Refused, key: ApiKey) -> RateLimitedError:
    what = {
        quota.Limit.USER_CONCURRENT: f"{{n}} queued or running jobs for user {key.user!r}",
        quota.Limit.USER_PER_MINUTE: f"{{n}} submissions per minute for user {key.user!r}",
        quota.Limit.TIER_CONCURRENT: f"{{n}} queued or running jobs for tier {key.tier!r}",
        quota.Limit.TIER_PER_MINUTE: f"{{n}} submissions per minute for tier {key.tier!r}",
    }[refused.limit].format(n=refused.value)
    RATE_LIMITED.labels(limit=refused.limit).inc()
    return RateLimitedError(
        f"rate limit reached: {what} (tier {key.tier!r}, limit {refused.limit}); "
        f"retry after {refused.retry_after_s} s",
        code=refused.limit,
        retry_after_s=refused.retry_after_s,
    )


# A job admitted this recently may still be starting: not finding it proves nothing yet.
START_GRACE_S = 15.0
# One reclaim per ledger at a time in this process: a burst against a full limit asks
# Temporal once, not once per refused request.
_reclaiming: dict[str, asyncio.Lock] = {}


async def _reclaim(client: Client, store: ObjectStore, q: quota.Quota) -> bool:
    """Forget the ledger's jobs that Temporal says are closed (or that never started); True if
    any place was freed."""
    lock = _reclaiming.setdefault(quota.ledger_key(q.scope, q.name), asyncio.Lock())
    if lock.locked():
        async with lock:  # another request is reclaiming: its result is ours
            return True
    async with lock:
        entries = await asyncio.to_thread(quota.active, store, q)
        gone = await asyncio.gather(
            *(_closed(client, job_id, admitted) for job_id, admitted in entries.items())
        )
        closed = {job_id for job_id, is_gone in zip(entries, gone, strict=True) if is_gone}
        if closed:
            log.info("admission: reclaimed places of closed jobs", scope=q.scope, jobs=len(closed))
            await asyncio.to_thread(quota.forget, store, q, closed, from_recent=False)
    if not lock.locked():  # nobody waits on it: don't keep a lock per user forever
        _reclaiming.pop(quota.ledger_key(q.scope, q.name), None)
    return bool(closed)


async def _closed(client: Client, job_id: str, admitted_at: float) -> bool:
    try:
        desc = await client.get_workflow_handle(job_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return time.time() - admitted_at > START_GRACE_S
        return False  # cannot tell: keep counting it
    return desc.status != WorkflowExecutionStatus.RUNNING
