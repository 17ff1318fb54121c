"""Preemption on the real stack: GPU worker processes killed mid-render with SIGTERM, SIGKILL
and SIGSTOP, and the jobs still give every user their video exactly once, byte-identical to an
uninterrupted run.

The stack here has two GPU workers (one stands by for the other's jobs), checkpoints every 4
steps and a 3 s heartbeat timeout, so an ungraceful death is noticed quickly.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from helpers import (
    EVERY_STEPS,
    HEARTBEAT_TIMEOUT_S,
    JOB,
    api_client,
    assert_reference_video,
    get_video,
    gpu_metrics,
    preemption_env,
    private_stack,
    scrape,
    value,
    wait_for,
    wait_step,
    worker_child,
)
from temporalio.client import Client

from videogen import contracts as c
from videogen.stack import Stack, gpu_worker_pid
from videogen.storage import FileStore


@pytest.fixture(scope="module")
def pstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = preemption_env("pre")
    with private_stack(tmp_path_factory, "preempt", env, gpu_workers=2, worker_metrics=True) as s:
        yield s


@pytest.fixture
def papi(pstack: Stack) -> Iterator[httpx.Client]:
    with api_client(pstack) as client:
        yield client


@pytest.fixture
async def tclient(pstack: Stack) -> AsyncIterator[Client]:
    yield await pstack.client()


def store_of(stack: Stack) -> FileStore:
    return FileStore(stack.data_dir / "objects")


async def running_at(
    api: httpx.Client, client: Client, seed: int, step: int
) -> tuple[str, int, int]:
    """Start a job and wait until it has denoised `step` steps: (job id, worker pid, step)."""
    job = start(api, seed)
    reached = wait_step(api, job, step)["step"]
    pid = await gpu_worker_pid(client, job)
    assert pid is not None
    return job, pid, reached


def start(api: httpx.Client, seed: int) -> str:
    r = api.post("/v1/videos", json={**JOB, "seed": seed})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def assert_nothing_left(stack: Stack, job_id: str, timeout_s: float = 15) -> None:
    """No checkpoint or frames of the job remain (cleanup runs right after the encode)."""
    store = store_of(stack)
    deadline = time.monotonic() + timeout_s
    while True:
        left = store.list(c.checkpoints_prefix(job_id)) + store.list(c.frames_prefix(job_id))
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left == []
    assert sorted(store.list(c.outputs_prefix(job_id))) == sorted(
        c.outputs_prefix(job_id) + name for name, _ in c.VARIANTS.values()
    )


async def test_sigterm_hands_over_at_once_and_loses_no_step(
    pstack: Stack, papi: httpx.Client, tclient: Client
) -> None:
    job, pid, _ = await running_at(papi, tclient, 101, 12)
    child = worker_child(pstack, pid)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    # The retry starts on the standby worker (the stopped one is not restarted until later).
    handover = None
    while handover is None and time.monotonic() - killed_at < 30:
        v = get_video(papi, job)
        if v["attempt"] >= 2:
            handover = time.monotonic() - killed_at
        time.sleep(0.02)
    assert handover is not None
    print(f"\nSIGTERM → retry running on the standby worker: {handover:.2f} s")
    assert handover < 3.0, "graceful hand-over should not wait for a heartbeat timeout"
    assert child.process.wait(30) == 0  # the preempted worker exits cleanly

    v = wait_for(papi, job)
    assert v["status"] == "completed" and v["attempt"] == 2
    assert v["wasted_steps"] == 0 and v["resumed_from_step"] >= 12
    # The standby worker counted the preemption (the preempted one exited) and measured the
    # recovery: from the hand-over heartbeat to its first step (well inside the 60 s SLO).
    m = gpu_metrics(pstack)
    assert value(m, "videogen_preemptions_total", kind="graceful") >= 1
    assert value(m, "videogen_preemption_recovery_seconds_count") >= 1
    assert (
        0
        < value(m, "videogen_preemption_recovery_seconds_sum")
        < 10.0 * value(m, "videogen_preemption_recovery_seconds_count")
    )
    assert_reference_video(papi, job, {**JOB, "seed": 101})
    assert_nothing_left(pstack, job)
    pstack.check()  # the supervisor brings the stopped worker back


async def test_sigkill_resumes_from_the_last_checkpoint_after_the_heartbeat_timeout(
    pstack: Stack, papi: httpx.Client, tclient: Client
) -> None:
    pstack.wait_gpu_workers(2)  # the standby is up (and serving metrics) before the kill
    job, pid, reached = await running_at(papi, tclient, 102, 20)
    standby = next(
        ch for ch in pstack.children if ch.name.startswith("gpu-worker") and ch.process.pid != pid
    )
    standby_url = f"http://127.0.0.1:{standby.metrics_port}/metrics"
    expired = value(scrape(standby_url), "videogen_lease_expirations_total")
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    v = wait_for(papi, job)
    took = time.monotonic() - killed_at
    assert v["status"] == "completed" and v["attempt"] == 2
    assert took >= HEARTBEAT_TIMEOUT_S - 0.5, "the retry can only come after the timeout"
    assert v["resumed_from_step"] >= reached - EVERY_STEPS - 1
    assert v["wasted_steps"] <= EVERY_STEPS + 1
    # Counted by the worker that resumed it: a lease expiration, and a recovery that took at
    # least the heartbeat timeout.
    m = scrape(standby_url)
    assert value(m, "videogen_lease_expirations_total") == expired + 1
    assert value(m, "videogen_preemption_recovery_seconds_bucket", le="2.5") < value(
        m, "videogen_preemption_recovery_seconds_bucket", le="+Inf"
    )
    assert_reference_video(papi, job, {**JOB, "seed": 102})
    assert_nothing_left(pstack, job)
    pstack.check()


async def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(
    pstack: Stack, papi: httpx.Client, tclient: Client
) -> None:
    job, pid, _ = await running_at(papi, tclient, 103, 20)
    os.kill(pid, signal.SIGKILL)
    # The retry waits for the heartbeat timeout: time to damage the newest checkpoint.
    store = store_of(pstack)
    keys = store.list(c.checkpoints_prefix(job))
    # The newest two, and at most one older: the writer deletes the oldest right after it
    # confirms a newer one, and a SIGKILL between the two leaves it (the job's cleanup takes
    # it). That it is deleted is tested in test_checkpoint.py, without a kill to race.
    assert 2 <= len(keys) <= 3, keys
    newest, previous = sorted(keys, key=lambda k: c.parse_checkpoint_key(k)[1])[::-1][:2]
    data = bytearray(store.get(newest))
    data[len(data) // 2] ^= 0xFF
    store.put(newest, bytes(data))
    v = wait_for(papi, job)
    assert v["status"] == "completed"
    assert f"step-{v['resumed_from_step']:06d}" in previous
    assert_reference_video(papi, job, {**JOB, "seed": 103})
    log = (pstack.log_dir / "gpu-worker-0.log").read_text() + (
        pstack.log_dir / "gpu-worker-1.log"
    ).read_text()
    # Refused by the heartbeat's sha256 (or, found by listing, by its own checksum).
    assert "checkpoint not usable" in log and ("sha256" in log or "checksum" in log)
    assert_nothing_left(pstack, job)
    pstack.check()


async def test_a_stale_attempt_that_wakes_up_never_publishes(
    pstack: Stack, papi: httpx.Client, tclient: Client
) -> None:
    pstack.wait_gpu_workers(2)
    job, pid, _ = await running_at(papi, tclient, 104, 10)
    os.kill(pid, signal.SIGSTOP)  # hung, as the server sees it
    try:
        v = wait_for(papi, job)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert v["status"] == "completed" and v["attempt"] == 2
    assert_reference_video(papi, job, {**JOB, "seed": 104})
    # The stale attempt learns at its next heartbeat that it was superseded and discards its
    # work: nothing of it appears, the published video stays the accepted attempt's.
    log_path = pstack.log_dir / f"{worker_child(pstack, pid).name}.log"
    deadline = time.monotonic() + 20
    while "stale attempt discarded" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "stale attempt discarded" in log_path.read_text()
    assert_nothing_left(pstack, job)
    assert_reference_video(papi, job, {**JOB, "seed": 104})
    assert worker_child(pstack, pid).process.poll() is None  # and the worker serves on


async def test_chaos_every_job_completes_once_and_identical(
    pstack: Stack, papi: httpx.Client, tclient: Client
) -> None:
    """Several jobs while the test kills the busy GPU workers at random points with SIGTERM or
    SIGKILL, and restarts them as a supervisor would."""
    pstack.wait_gpu_workers(2)
    rng = random.Random(20261127)
    seeds = [201, 202, 203]
    jobs = {start(papi, seed): seed for seed in seeds}
    kills: dict[str, list[str]] = {job: [] for job in jobs}
    deadline = time.monotonic() + 240
    signals = [signal.SIGTERM, signal.SIGKILL] * 2  # both kinds, in a random order
    rng.shuffle(signals)
    budget = len(signals)
    while time.monotonic() < deadline:
        pstack.check()
        states = {job: get_video(papi, job) for job in jobs}
        if all(v["status"] in ("completed", "failed", "cancelled") for v in states.values()):
            break
        victims = [
            job
            for job, v in states.items()
            if v["phase"] == "denoising" and v["step"] >= rng.randint(3, 40)
        ]
        if budget and victims:
            job = rng.choice(victims)
            pid = await gpu_worker_pid(tclient, job)
            child = worker_child(pstack, pid) if pid is not None else None
            # Until the heartbeat timeout the server names a SIGKILLed worker: skip those.
            if pid is not None and child is not None and child.process.poll() is None:
                sig = signals[len(signals) - budget]
                os.kill(pid, sig)
                kills[job].append(sig.name)
                budget -= 1
        time.sleep(rng.uniform(0.1, 0.6))
    print(f"\nchaos kills: {kills}")
    assert budget < len(signals), "no kill happened: the test did not test anything"
    for job, seed in jobs.items():
        v = wait_for(papi, job, timeout_s=120)
        assert v["status"] == "completed", v
        assert_reference_video(papi, job, {**JOB, "seed": seed})
        # SIGTERM loses nothing; SIGKILL at most one interval plus the step being uploaded.
        hard = kills[job].count("SIGKILL")
        assert v["wasted_steps"] <= hard * (EVERY_STEPS + 1), (v, kills[job])
        assert_nothing_left(pstack, job)
    listed = papi.get("/v1/videos", params={"limit": 100}).json()["data"]
    assert sum(1 for v in listed if v["id"] in jobs) == len(jobs)  # each exactly once
    assert store_of(pstack).list("frames/") == []
    assert store_of(pstack).list("checkpoints/") == []
