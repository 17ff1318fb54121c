"""The admission ledgers' rules (videogen.quota) on a FileStore, without Temporal or HTTP.

The burst itself, over real HTTP and two API processes, is tests/test_admission_burst.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from videogen import quota
from videogen.quota import Limit, Quota, Refused, Scope
from videogen.storage import FileStore

T0 = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def _user(concurrent: int = 0, per_minute: int = 0) -> Quota:
    return Quota(Scope.USER, "alice", concurrent, per_minute)


def _refusal(store: FileStore, quotas: list[Quota], job: str, now: float = T0) -> Refused:
    with pytest.raises(Refused) as info:
        quota.admit(store, job, quotas, now)
    return info.value


def test_concurrency_limit_and_release(store: FileStore) -> None:
    q = [_user(concurrent=2)]
    quota.admit(store, "video_a", q, T0)
    quota.admit(store, "video_b", q, T0)
    refused = _refusal(store, q, "video_c")
    assert refused.limit == Limit.USER_CONCURRENT and refused.value == 2
    assert refused.retry_after_s == quota.CONCURRENT_RETRY_AFTER_S
    quota.release(store, "video_a", "alice", "paid")
    quota.admit(store, "video_c", q, T0 + 1)
    assert set(quota.active(store, q[0])) == {"video_b", "video_c"}
    quota.release(store, "video_a", "alice", "paid")  # twice, or never admitted: no change
    quota.release(store, "video_zzz", "nobody", "")


def test_the_same_job_takes_one_place(store: FileStore) -> None:
    # Concurrent retries of one idempotent request share its job id.
    q = [_user(concurrent=1, per_minute=1)]
    quota.admit(store, "video_a", q, T0)
    quota.admit(store, "video_a", q, T0 + 0.1)
    assert list(quota.active(store, q[0])) == ["video_a"]


def test_per_minute_window_slides(store: FileStore) -> None:
    q = [_user(per_minute=3)]
    for i, t in enumerate((T0, T0 + 10, T0 + 20)):
        quota.admit(store, f"video_{i}", q, t)
        quota.release(store, f"video_{i}", "alice", "")  # ended: still counts this minute
    refused = _refusal(store, q, "video_x", T0 + 30)
    assert refused.limit == Limit.USER_PER_MINUTE
    # When the submission at T0 has left the window, counted in whole seconds (rounded up).
    assert refused.retry_after_s == 31
    _refusal(store, q, "video_x", T0 + 60.5)
    quota.admit(store, "video_x", q, T0 + 61)
    assert _refusal(store, q, "video_y", T0 + 61.5).retry_after_s == 10


def test_a_refusal_by_the_tier_gives_the_user_place_back(store: FileStore) -> None:
    user = _user(concurrent=5)
    tier = Quota(Scope.TIER, "free", concurrent=1)
    quota.admit(store, "video_a", [user, tier], T0)
    refused = _refusal(store, [user, tier], "video_b")
    assert refused.limit == Limit.TIER_CONCURRENT
    assert list(quota.active(store, user)) == ["video_a"]


def test_forget_and_unlimited_quotas(store: FileStore) -> None:
    q = _user(concurrent=1, per_minute=1)
    quota.admit(store, "video_a", [q], T0)
    quota.forget(store, q, {"video_a"}, from_recent=True)  # an admission given back
    quota.admit(store, "video_b", [q], T0 + 1)
    # A quota with no limits keeps no ledger at all.
    quota.admit(store, "video_c", [Quota(Scope.TIER, "internal")], T0)
    assert store.list("admission/tier/") == []


def test_ledger_keys_take_any_name() -> None:
    key = quota.ledger_key(Scope.USER, "o'brien \"\\ /../x")
    assert key.startswith("admission/user/") and ".." not in key


def test_threads_never_over_admit(store: FileStore) -> None:
    q = [_user(concurrent=10)]
    admitted: list[str] = []

    def one(i: int) -> None:
        try:
            quota.admit(store, f"video_{i}", q, T0)
            admitted.append(f"video_{i}")
        except Refused:
            pass

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 10
    assert set(quota.active(store, q[0])) == set(admitted)


def test_active_jobs_text_finds_whole_tokens_only() -> None:
    jobs = quota.ActiveJobs()
    for i, job in enumerate(["video_ab", "xvideo_a", "video_a", "video_abc"]):
        jobs.add(job, 100 + i)
    assert len(jobs) == 4 and "video_a" in jobs and "video_" not in jobs
    assert jobs.remove("video_a") == 102  # not the "video_a" inside "xvideo_a@101"
    assert jobs.text == "video_ab@100 xvideo_a@101 video_abc@103"
    assert jobs.remove("video_ab") == 100 and jobs.remove("video_abc") == 103
    assert jobs.text == "xvideo_a@101" and jobs.remove("video_zz") is None
    assert jobs.remove("xvideo_a") == 101 and len(jobs) == 0 and jobs.text == ""
    with pytest.raises(ValueError, match="without spaces or '@'"):
        jobs.add("video a", 1)


def test_ledger_reads_the_earlier_all_json_encoding() -> None:
    old = b'{"scope":"user","name":"u","active":{"video_a":5,"video_b":6},"recent":{"5":2}}'
    ledger = quota.Ledger.load(old, quota.Quota(quota.Scope.USER, "u", concurrent=3))
    assert ledger.active.items() == {"video_a": 5, "video_b": 6}
    assert ledger.submissions() == 2
    again = quota.Ledger.load(ledger.dump(), quota.Quota(quota.Scope.USER, "u"))
    assert again.active.items() == {"video_a": 5, "video_b": 6} and again.recent == {"5": 2}


def test_a_batch_admits_in_order_with_one_update_per_ledger(store: FileStore) -> None:
    updates: list[str] = []
    real_update = store.update

    def counting(key: str, change: quota.Change) -> None:
        updates.append(key)
        real_update(key, change)

    store.update = counting  # type: ignore[method-assign]
    bob = Quota(Scope.USER, "bob", concurrent=1)
    tier = Quota(Scope.TIER, "free", concurrent=3)
    alice = _user(concurrent=2)
    jobs = [("video_1", [alice, tier]), ("video_2", [bob, tier]), ("video_3", [alice, tier])]
    jobs += [("video_4", [alice, tier]), ("video_5", [bob, tier]), ("video_1", [alice, tier])]
    outcome = quota.admit_all(store, jobs, T0)
    assert {j for j, r in outcome.items() if r is None} == {"video_1", "video_2", "video_3"}
    assert outcome["video_4"].limit == Limit.USER_CONCURRENT  # type: ignore[union-attr]
    assert outcome["video_5"].limit == Limit.USER_CONCURRENT  # type: ignore[union-attr]
    assert len(updates) == 3  # alice, bob, then the tier: not one per job
    assert set(quota.active(store, tier)) == {"video_1", "video_2", "video_3"}
    # The tier is full now: a user place taken in the same batch is given back.
    roomier = _user(concurrent=9)  # alice again, her ledger with room to spare
    outcome = quota.admit_all(store, [("video_6", [roomier, tier])], T0)
    assert outcome["video_6"].limit == Limit.TIER_CONCURRENT  # type: ignore[union-attr]
    assert set(quota.active(store, roomier)) == {"video_1", "video_3"}


def test_a_store_failure_undoes_the_whole_batch(store: FileStore) -> None:
    real_update = store.update
    user, tier = _user(concurrent=5, per_minute=5), Quota(Scope.TIER, "free", concurrent=5)
    calls = {"n": 0}

    def flaky(key: str, change: quota.Change) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the tier's update, after the user's went through
            raise RuntimeError("store down")
        real_update(key, change)

    store.update = flaky  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="store down"):
        quota.admit_all(store, [("video_a", [user, tier]), ("video_b", [user, tier])], T0)
    store.update = real_update  # type: ignore[method-assign]
    assert quota.active(store, user) == {}
    for job in ("video_1", "video_2", "video_3", "video_4", "video_5"):  # per minute given back
        quota.admit(store, job, [user], T0 + 1)


def test_inline_admission_waits_for_no_one_and_never_over_admits(store: FileStore) -> None:
    alice, tier = _user(concurrent=30), Quota(Scope.TIER, "free", concurrent=1000)
    with store.holding([quota.ledger_key(Scope.USER, "alice")]):
        assert quota.admit_all_now(store, [("video_x", [alice, tier])], T0) is None
    assert quota.active(store, alice) == {} and quota.active(store, tier) == {}
    outcomes: list[Refused | None] = []

    def submit(worker: int) -> None:
        for i in range(20):
            job = (f"video_{worker}_{i}", [alice, tier])
            # Inline where no one holds the ledgers, else the blocking path, as the API does.
            found = quota.admit_all_now(store, [job], T0) or quota.admit_all(store, [job], T0)
            outcomes.append(found[job[0]])

    threads = [threading.Thread(target=submit, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(o is None for o in outcomes) == 30 == len(quota.active(store, alice))
    assert len(quota.active(store, tier)) == 30
