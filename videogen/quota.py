"""Admission ledgers: each user's and each tier's active jobs and recent submissions, kept as
small JSON objects in the object store and changed only by compare-and-swap
(`ObjectStore.update`), so that rate limits hold under a burst and across API replicas.

Why not count the jobs in Temporal's visibility store, as the limits once did: visibility is
eventually consistent, and it lags exactly when a burst arrives (200 concurrent submissions for
a user allowed 10 admitted 111). An update of one ledger is linearizable: however many replicas
admit at once, each sees the previous admission, so none admits past the limit.

A ledger (`admission/{scope}/{sha256 of the name}.json`) is a line of JSON, then the active
jobs:

    {"scope":"user","name":"alice","recent":{"1764547200":3}}
    video_1f..@1764547200 video_2a..@1764547203

`recent` counts the admissions of the last minute, per second. The second line holds the
queued or running jobs as `job@admitted_second` tokens. A tier may have thousands of active
jobs: as a JSON object of 1,300 entries they cost 0.8 ms per update to decode and encode, and
as a JSON string still 0.3 ms (the encoder scans it for escapes), most of an admission. Plain
text is found in and spliced at memory speed.

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

from videogen.storage import FileStore, NotFound, ObjectStore

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


class ActiveJobs:
    """A ledger's queued or running jobs: `job@admitted_second` tokens joined by spaces."""

    def __init__(self, text: str = "") -> None:
        self.text = text

    @classmethod
    def load(cls, raw: dict[str, int]) -> ActiveJobs:
        return cls(" ".join(f"{job}@{int(t)}" for job, t in raw.items()))

    def __len__(self) -> int:
        return self.text.count(" ") + 1 if self.text else 0

    def __contains__(self, job_id: str) -> bool:
        return self._find(job_id) >= 0

    def _find(self, job_id: str) -> int:
        needle = job_id + "@"
        i = self.text.find(needle)
        while i > 0 and self.text[i - 1] != " ":  # inside another token: look further
            i = self.text.find(needle, i + 1)
        return i

    def add(self, job_id: str, second: int) -> None:
        if not job_id or " " in job_id or "@" in job_id:
            raise ValueError(f"job id {job_id!r}: must be non-empty, without spaces or '@'")
        token = f"{job_id}@{second}"
        self.text = f"{self.text} {token}" if self.text else token

    def remove(self, job_id: str) -> int | None:
        """Take the job out; its admission second, or None if it was not there."""
        start = self._find(job_id)
        if start < 0:
            return None
        end = self.text.find(" ", start)
        end = len(self.text) if end < 0 else end
        second = int(self.text[start + len(job_id) + 1 : end])
        before, after = self.text[:start].rstrip(" "), self.text[end:].lstrip(" ")
        self.text = f"{before} {after}" if before and after else before or after
        return second

    def items(self) -> dict[str, int]:
        jobs = (token.rpartition("@") for token in self.text.split(" ") if token)
        return {job: int(second) for job, _, second in jobs}


@dataclass
class Ledger:
    scope: str
    name: str
    active: ActiveJobs
    # Admissions per whole second, as JSON keys: a count over the minute costs 60 entries at
    # most, however busy the tier. An admission counts until a second after its exact expiry.
    recent: dict[str, int]

    @classmethod
    def load(cls, raw: bytes | None, quota: Quota) -> Ledger:
        header, _, active = (raw or b"").partition(b"\n")
        data = json.loads(header) if header else {}
        if "active" in data:  # the earlier encoding: all JSON, active as {job: second}
            return cls(quota.scope, quota.name, ActiveJobs.load(data["active"]), data["recent"])
        return cls(quota.scope, quota.name, ActiveJobs(active.decode()), data.get("recent", {}))

    def dump(self) -> bytes:
        data = {"scope": self.scope, "name": self.name, "recent": self.recent}
        return json.dumps(data, separators=(",", ":")).encode() + b"\n" + self.active.text.encode()

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
        self.active.add(job_id, int(now))
        second = str(int(now))
        self.recent[second] = self.recent.get(second, 0) + 1

    def remove(self, job_id: str, *, from_recent: bool) -> bool:
        admitted = self.active.remove(job_id)
        if admitted is None:
            return False
        second = str(admitted)
        if from_recent and self.recent.get(second, 0) > 0:
            self.recent[second] -= 1
        return True


def _drop(quota: Quota, job_ids: set[str], *, from_recent: bool) -> Change:
    def change(raw: bytes | None) -> bytes | None:
        if raw is None:
            return None
        ledger = Ledger.load(raw, quota)
        hit = [ledger.remove(job_id, from_recent=from_recent) for job_id in job_ids]
        return ledger.dump() if any(hit) else None

    return change


def admit(store: ObjectStore, job_id: str, quotas: list[Quota], now: float) -> None:
    """Count `job_id` in every limited ledger of `quotas`, or raise `Refused` and count it in
    none (a ledger already taken is given back). Blocking: call it from a thread."""
    refused = admit_all(store, [(job_id, quotas)], now)[job_id]
    if refused is not None:
        raise refused


def admit_all(
    store: ObjectStore, requests: list[tuple[str, list[Quota]]], now: float
) -> dict[str, Refused | None]:
    """`admit` for several jobs at once, with one update per ledger however many jobs it
    counts: a burst's admissions waiting in one process cost one read-modify-write, not one
    each queued behind the ledger's lock. Jobs are taken in order; each job's outcome is None
    (admitted) or its `Refused`. A store failure undoes the whole batch and propagates."""
    outcome: dict[str, Refused | None] = {job_id: None for job_id, _ in requests}
    taken: list[tuple[Quota, str]] = []
    try:
        for position in range(max((len(q) for _, q in requests), default=0)):
            groups: dict[Quota, list[str]] = {}
            for job_id, quotas in requests:
                if outcome[job_id] is None and position < len(quotas) and quotas[position].limited:
                    groups.setdefault(quotas[position], []).append(job_id)
            for quota, job_ids in groups.items():
                results = _take(store, quota, job_ids, now)
                for job_id in job_ids:
                    outcome[job_id] = outcome[job_id] or results.get(job_id)
                    if job_id not in results:
                        taken.append((quota, job_id))
    except BaseException:
        _give_back(store, taken)
        raise
    _give_back(store, [(q, job_id) for q, job_id in taken if outcome[job_id] is not None])
    return outcome


def admit_all_now(
    store: FileStore, requests: list[tuple[str, list[Quota]]], now: float
) -> dict[str, Refused | None] | None:
    """`admit_all` if every ledger it needs can be locked at once without waiting (see
    `FileStore.holding`), else None and nothing changed: then call `admit_all` in a thread."""
    keys = {ledger_key(q.scope, q.name) for _, quotas in requests for q in quotas if q.limited}
    with store.holding(keys) as held:
        return None if held is None else admit_all(held, requests, now)


def _take(store: ObjectStore, quota: Quota, job_ids: list[str], now: float) -> dict[str, Refused]:
    """One update of `quota`'s ledger that admits `job_ids` in order; the refused ones."""
    refused: dict[str, Refused] = {}

    def change(raw: bytes | None) -> bytes | None:
        refused.clear()  # called again after a lost race: start over
        ledger = Ledger.load(raw, quota)
        ledger.prune(now)
        added = False
        for job_id in job_ids:
            if job_id in ledger.active:
                continue  # a concurrent retry of the same request: already admitted
            reason = _refusal(ledger, quota, now)
            if reason is not None:
                refused[job_id] = reason
            else:
                ledger.add(job_id, now)
                added = True
        return ledger.dump() if added else None

    store.update(ledger_key(quota.scope, quota.name), change)
    return dict(refused)


def _refusal(ledger: Ledger, quota: Quota, now: float) -> Refused | None:
    if quota.concurrent and len(ledger.active) >= quota.concurrent:
        limit = Limit(f"{quota.scope}_concurrent")
        return Refused(quota, limit, quota.concurrent, CONCURRENT_RETRY_AFTER_S)
    if quota.per_minute and ledger.submissions() >= quota.per_minute:
        retry = ledger.retry_after(quota.per_minute, now)
        return Refused(quota, Limit(f"{quota.scope}_per_minute"), quota.per_minute, retry)
    return None


def _give_back(store: ObjectStore, taken: list[tuple[Quota, str]]) -> None:
    by_quota: dict[Quota, set[str]] = {}
    for quota, job_id in taken:
        by_quota.setdefault(quota, set()).add(job_id)
    for quota, job_ids in by_quota.items():
        forget(store, quota, job_ids, from_recent=True)


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
    return Ledger.load(raw, quota).active.items()
