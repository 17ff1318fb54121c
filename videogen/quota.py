"""Admission ledgers: each user's and each tier's active jobs and recent submissions, kept as
small JSON objects in the object store and changed only by compare-and-swap
(`ObjectStore.update`), so that rate limits hold under a burst and across API replicas.

Why not count the jobs in Temporal's visibility store, as the limits once did: visibility is
eventually consistent, and it lags exactly when a burst arrives (200 concurrent submissions for
a user allowed 10 admitted 111). An update of one ledger is linearizable: however many replicas
admit at once, each sees the previous admission, so none admits past the limit.

A ledger (`admission/{scope}/{sha256 of the name}.json`):

    {"scope": "user", "name": "alice",
     "active": {"video_1f..": 1764547200},     # queued or running jobs, by admission time
     "recent": {"1764547200": 3}}              # admissions of the last minute, per second

The life of an entry:

* `admit` adds a job to its user's and its tier's ledgers before its workflow starts, or raises
  `Refused` naming the limit. Concurrent retries of one request (one Idempotency-Key, so one
  job id) take one place, not several.
* `release` takes the job out of `active` when it ends: the job's cleanup activity calls it on
  every ending (completed, failed, cancelled). Its second in `recent` ages out after a minute.
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
    # Queued or running jobs, by admission time in whole seconds (ints encode fast).
    active: dict[str, int]
    # Admissions per whole second, as JSON keys: a count over the minute costs 60 entries at
    # most, however busy the tier. An admission counts until a second after its exact expiry.
    recent: dict[str, int]

    @classmethod
    def load(cls, raw: bytes | None, quota: Quota) -> Ledger:
        data = json.loads(raw) if raw else {}
        return cls(quota.scope, quota.name, data.get("active", {}), data.get("recent", {}))

    def dump(self) -> bytes:
        data = {
            "scope": self.scope,
            "name": self.name,
            "active": self.active,
            "recent": self.recent,
        }
        return json.dumps(data, separators=(",", ":")).encode()

    def prune(self, now: float) -> None:
        self.recent = {s: n for s, n in self.recent.items() if int(s) + WINDOW_S + 1 > now}

    def submissions(self) -> int:
        return sum(self.recent.values())

    def retry_after(self, per_minute: int, now: float) -> int:
        """Seconds until enough of the minute's admissions have left for one more."""
        over, left = self.submissions() - per_minute + 1, 0
        for second in sorted(self.recent, key=int):
            left += self.recent[second]
            if left >= over:
                return max(1, math.ceil(int(second) + WINDOW_S + 1 - now))
        return 1

    def add(self, job_id: str, now: float) -> None:
        self.active[job_id] = int(now)
        second = str(int(now))
        self.recent[second] = self.recent.get(second, 0) + 1

    def remove(self, job_id: str, *, from_recent: bool) -> None:
        admitted = self.active.pop(job_id)
        second = str(int(admitted))
        if from_recent and self.recent.get(second, 0) > 0:
            self.recent[second] -= 1


def _take(quota: Quota, job_id: str, now: float) -> Change:
    def change(raw: bytes | None) -> bytes | None:
        ledger = Ledger.load(raw, quota)
        if job_id in ledger.active:
            return None  # a concurrent retry of the same request: already admitted
        ledger.prune(now)
        if quota.concurrent and len(ledger.active) >= quota.concurrent:
            limit = Limit(f"{quota.scope}_concurrent")
            raise Refused(quota, limit, quota.concurrent, CONCURRENT_RETRY_AFTER_S)
        if quota.per_minute and ledger.submissions() >= quota.per_minute:
            retry = ledger.retry_after(quota.per_minute, now)
            raise Refused(quota, Limit(f"{quota.scope}_per_minute"), quota.per_minute, retry)
        ledger.add(job_id, now)
        return ledger.dump()

    return change


def _drop(quota: Quota, job_ids: set[str], *, from_recent: bool) -> Change:
    def change(raw: bytes | None) -> bytes | None:
        if raw is None:
            return None
        ledger = Ledger.load(raw, quota)
        hit = job_ids & ledger.active.keys()
        if not hit:
            return None
        for job_id in hit:
            ledger.remove(job_id, from_recent=from_recent)
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


def active(store: ObjectStore, quota: Quota) -> dict[str, int]:
    """The ledger's active jobs and their admission times, whole seconds (a snapshot)."""
    try:
        raw: bytes | None = store.get(ledger_key(quota.scope, quota.name))
    except NotFound:
        raw = None
    return Ledger.load(raw, quota).active
