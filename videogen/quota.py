"""Admission ledgers: each user's and each tier's active jobs and recent submissions, kept as
small JSON objects in the object store and changed only by compare-and-swap
(`ObjectStore.update`), so that rate limits hold under a burst and across API replicas.

Why not count the jobs in Temporal's visibility store, as the limits once did: visibility is
eventually consistent, and it lags exactly when a burst arrives (200 concurrent submissions for
a user allowed 10 admitted 111). An update of one ledger is linearizable: however many replicas
admit at once, each sees the previous admission, so none admits past the limit.

A ledger (`admission/{scope}/{sha256 of the name}.json`):

    {"scope": "user", "name": "alice",
     "active": {"video_1f..": 1764547200.5},   # queued or running jobs, by admission time
     "recent": {"video_1f..": 1764547200.5}}   # admissions of the last minute

The life of an entry:

* `admit` adds a job to its user's and its tier's ledgers before its workflow starts, or raises
  `Refused` naming the limit. Concurrent retries of one request (one Idempotency-Key, so one
  job id) take one place, not several.
* `release` takes the job out of `active` when it ends: the job's cleanup activity calls it on
  every ending (completed, failed, cancelled). `recent` entries age out after a minute.
* A job that ended without its cleanup (terminated by an operator) or never started (its start
  failed after the admission) leaves a stale entry. When a ledger is full, the API asks Temporal
  about its active jobs and `forget`s those that are closed (`api.admission`).

Clocks: times are the admitting replica's wall clock. Replicas a few seconds apart shift the
per-minute window by as much, never the concurrency count.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from videogen.storage import NotFound, ObjectStore

Change = Callable[[bytes | None], bytes | None]

WINDOW_S = 60.0
# A concurrency limit frees up when a job ends, which nobody can predict: a polite hint.
CONCURRENT_RETRY_AFTER_S = 15


class Scope(StrEnum):
    USER = "user"
    TIER = "tier"


class Limit(StrEnum):
    """The limits of a tier's policy; a refusal's `error.code`."""

    USER_CONCURRENT = "user_concurrent"
    USER_PER_MINUTE = "user_per_minute"
    TIER_CONCURRENT = "tier_concurrent"
    TIER_PER_MINUTE = "tier_per_minute"


@dataclass(frozen=True)
class Quota:
    """One ledger's limits (0: unlimited), as a tier's policy sets them."""

    scope: Scope
    name: str
    concurrent: int = 0
    per_minute: int = 0

    @property
    def limited(self) -> bool:
        return bool(self.concurrent or self.per_minute)


class Refused(Exception):
    """Admitting the job would exceed `limit` of `quota`."""

    def __init__(self, quota: Quota, limit: Limit, value: int, retry_after_s: int) -> None:
        super().__init__(f"{limit} of {quota.scope} {quota.name!r} reached ({value})")
        self.quota = quota
        self.limit = limit
        self.value = value
        self.retry_after_s = retry_after_s

    @property
    def concurrent(self) -> bool:
        return self.limit in (Limit.USER_CONCURRENT, Limit.TIER_CONCURRENT)


def ledger_key(scope: Scope, name: str) -> str:
    # Hashed: a user id or tier name of any characters makes a valid, fixed-length key.
    return f"admission/{scope}/{hashlib.sha256(name.encode()).hexdigest()[:40]}.json"


@dataclass
class Ledger:
    scope: str
    name: str
    active: dict[str, float]
    recent: dict[str, float]

    @classmethod
    def load(cls, raw: bytes | None, quota: Quota) -> Ledger:
        data = json.loads(raw) if raw else {}
        return cls(
            scope=quota.scope,
            name=quota.name,
            active={k: float(v) for k, v in data.get("active", {}).items()},
            recent={k: float(v) for k, v in data.get("recent", {}).items()},
        )

    def dump(self) -> bytes:
        return json.dumps(
            {"scope": self.scope, "name": self.name, "active": self.active, "recent": self.recent},
            sort_keys=True,
        ).encode()

    def prune(self, now: float) -> None:
        self.recent = {k: t for k, t in self.recent.items() if t > now - WINDOW_S}


def _take(quota: Quota, job_id: str, now: float) -> Change:
    def change(raw: bytes | None) -> bytes | None:
        ledger = Ledger.load(raw, quota)
        if job_id in ledger.active or job_id in ledger.recent:
            return None  # a concurrent retry of the same request: already admitted
        ledger.prune(now)
        if quota.concurrent and len(ledger.active) >= quota.concurrent:
            limit = Limit(f"{quota.scope}_concurrent")
            raise Refused(quota, limit, quota.concurrent, CONCURRENT_RETRY_AFTER_S)
        if quota.per_minute and len(ledger.recent) >= quota.per_minute:
            # When enough admissions have left the window for one more.
            leaving = sorted(ledger.recent.values())[len(ledger.recent) - quota.per_minute]
            retry = max(1, math.ceil(leaving + WINDOW_S - now))
            raise Refused(quota, Limit(f"{quota.scope}_per_minute"), quota.per_minute, retry)
        ledger.active[job_id] = now
        ledger.recent[job_id] = now
        return ledger.dump()

    return change


def _drop(quota: Quota, job_ids: set[str], *, from_recent: bool) -> Change:
    def change(raw: bytes | None) -> bytes | None:
        if raw is None:
            return None
        ledger = Ledger.load(raw, quota)
        hit = job_ids & (ledger.active.keys() | (ledger.recent.keys() if from_recent else set()))
        if not hit:
            return None
        for job_id in hit:
            ledger.active.pop(job_id, None)
            if from_recent:
                ledger.recent.pop(job_id, None)
        return ledger.dump()

    return change


def admit(store: ObjectStore, job_id: str, quotas: list[Quota], now: float) -> None:
    """Count `job_id` in every limited ledger of `quotas`, or raise `Refused` and count it in
    none (a ledger already taken is given back). Blocking: call it from a thread."""
    taken: list[Quota] = []
    try:
        for quota in quotas:
            if quota.limited:
                store.update(ledger_key(quota.scope, quota.name), _take(quota, job_id, now))
                taken.append(quota)
    except BaseException:
        for quota in taken:
            forget(store, quota, {job_id}, from_recent=True)
        raise


def release(store: ObjectStore, job_id: str, user: str, tier: str) -> None:
    """The job has ended: it no longer counts against concurrency (its submission still
    counts in the per-minute window). A job never admitted, or released before: no change."""
    for scope, name in ((Scope.USER, user), (Scope.TIER, tier)):
        if name:
            quota = Quota(scope, name)
            store.update(ledger_key(scope, name), _drop(quota, {job_id}, from_recent=False))


def forget(store: ObjectStore, quota: Quota, job_ids: set[str], *, from_recent: bool) -> None:
    """Take jobs out of `active`: jobs found closed without their release. `from_recent` also
    takes their submissions out of the minute's count: an admission given back."""
    store.update(
        ledger_key(quota.scope, quota.name), _drop(quota, job_ids, from_recent=from_recent)
    )


def active(store: ObjectStore, quota: Quota) -> dict[str, float]:
    """The ledger's active jobs and their admission times (a snapshot)."""
    try:
        raw: bytes | None = store.get(ledger_key(quota.scope, quota.name))
    except NotFound:
        raw = None
    return Ledger.load(raw, quota).active
