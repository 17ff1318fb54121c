"""Scheduling and admission on a real dev server: tier priority, per-user fairness, dedicated
pools, rate limits shared by API replicas, idempotent submission, queue position and ETA.

Jobs are queued on a private GPU queue with no worker, then a GPU worker (in this process, the
same code as `videogen worker gpu`) is started and the order in which it starts them is read
from the workflows' histories (the first progress signal of each).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from datetime import datetime

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import direct_request, gpu_worker_settings, submit, wait_for
from temporalio.client import Client

from api import jobs
from api.app import create_app
from videogen import contracts as c
from videogen.settings import DEFAULT_TIERS, ApiKey, Settings
from videogen.stack import Stack
from videogen.temporal import connect
from worker_gpu import main as gpu_main


@pytest.fixture
async def client(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Client:
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{stack.temporal_port}")
    return await connect(wait_s=10)


async def _queue(
    client: Client, stack: Stack, queue: str, jobs_: list[tuple[str, str]]
) -> list[str]:
    """Start one job per (user, tier) on `queue`, in order; wait until all wait on it."""
    ids = []
    for user, tier in jobs_:
        req = direct_request(stack, gpu_task_queue=queue)
        await jobs.start(client, req, ApiKey("k", user, tier), DEFAULT_TIERS[tier])
        ids.append(req.job_id)
    for job_id in ids:  # scheduled = the workflow's first task ran and asked for the activity
        handle = client.get_workflow_handle(job_id)
        for _ in range(200):
            if (await handle.describe()).raw_description.pending_activities:
                break
            await asyncio.sleep(0.05)
    return ids


async def _started_at(client: Client, job_id: str) -> datetime:
    """When the GPU activity started: its first progress signal (sent as it starts)."""
    async for event in client.get_workflow_handle(job_id).fetch_history_events():
        if event.HasField("workflow_execution_signaled_event_attributes"):
            return event.event_time.ToDatetime()
    raise AssertionError(f"{job_id} never started")


async def _run_worker_until_done(client: Client, settings: Settings, ids: list[str]) -> list[str]:
    """Serve the private queue until every job completed; the ids in start order."""
    stop = asyncio.Event()
    worker = asyncio.ensure_future(gpu_main.run(settings, stop))
    try:
        for job_id in ids:
            await asyncio.wait_for(client.get_workflow_handle(job_id).result(), timeout=120)
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=60)
    starts = {job_id: await _started_at(client, job_id) for job_id in ids}
    return sorted(ids, key=starts.__getitem__)


async def test_a_paid_job_starts_before_earlier_free_jobs(
    client: Client, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = gpu_worker_settings(stack, monkeypatch, "prio")
    queue = settings.gpu_task_queue("videogen-tiny")
    free = await _queue(client, stack, queue, [("alice", "free")] * 4)
    paid = await _queue(client, stack, queue, [("bob", "paid")])
    order = await _run_worker_until_done(client, settings, free + paid)
    assert order[0] == paid[0], order


async def test_fairness_interleaves_users_within_a_tier(
    client: Client, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = gpu_worker_settings(stack, monkeypatch, "fair")
    queue = settings.gpu_task_queue("videogen-tiny")
    a = await _queue(client, stack, queue, [("alice", "free")] * 6)
    carol = await _queue(client, stack, queue, [("carol", "free")] * 2)
    order = await _run_worker_until_done(client, settings, a + carol)
    positions = sorted(order.index(j) + 1 for j in carol)
    print(f"\ncarol's jobs started at positions {positions} of {len(order)}")
    # FIFO would put them at 7 and 8; fairness shares the worker between the two users.
    assert positions[-1] <= 4, order


async def test_a_dedicated_pool_serves_only_its_tier(
    client: Client, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = gpu_worker_settings(stack, monkeypatch, "pool", worker_pool="internal")
    assert settings.gpu_task_queue("videogen-tiny", settings.worker_pool).endswith(
        "-gpu-videogen-tiny-pool-internal"
    )
    routed = Settings(
        tiers={
            **DEFAULT_TIERS,
            "internal": DEFAULT_TIERS["internal"].model_copy(update={"dedicated_pool": True}),
        }
    )
    assert routed.pool_for("internal") == "internal" and routed.pool_for("paid") == ""
    internal = await _queue(
        client, stack, settings.gpu_task_queue("videogen-tiny", "internal"), [("boss", "internal")]
    )
    shared = await _queue(
        client, stack, settings.gpu_task_queue("videogen-tiny"), [("bob", "paid")]
    )
    # The pool's worker runs the internal job; the shared queue's job is not its business.
    stop = asyncio.Event()
    worker = asyncio.ensure_future(gpu_main.run(settings, stop))
    try:
        result = await asyncio.wait_for(
            client.get_workflow_handle(internal[0], result_type=c.JobResult).result(), 120
        )
        assert result.warm is False  # the job was queued before the worker had its model
        assert result.model_load_seconds > 0
        desc = await client.get_workflow_handle(shared[0]).describe()
        assert desc.raw_description.pending_activities[0].attempt == 1
        assert not desc.raw_description.pending_activities[0].last_worker_identity
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=60)
        await client.get_workflow_handle(shared[0]).terminate("test over")


def _replica(stack: Stack, monkeypatch: pytest.MonkeyPatch, prefix: str) -> TestClient:
    """An API app of its own (a replica), sharing only the stack's Temporal."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{stack.temporal_port}")
    tiers = {
        "free": {"priority": 4, "user_per_minute": 3, "user_concurrent": 2},
        "paid": {"priority": 2},
    }
    settings = Settings(
        data_dir=stack.data_dir,
        api_keys="lim-key:limited:free",
        storage_url=stack.child_env()["VIDEOGEN_STORAGE_URL"],
        task_queue_prefix=prefix,
        tiers=json.loads(json.dumps(tiers)),
    )
    return TestClient(create_app(settings), headers={"Authorization": "Bearer lim-key"})


async def _visible(client: Client, query: str, count: int) -> None:
    """Visibility is eventually consistent: wait until it shows what was just written."""
    for _ in range(100):
        if (await client.count_workflows(query)).count == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"visibility never showed {count} for {query}")


async def test_limits_hold_across_two_api_replicas(
    client: Client, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"limits-{time.monotonic_ns()}"  # no worker: the jobs stay queued
    body = {"prompt": "a kite", "size": "64x64", "seconds": 1}
    running = f"{c.SA_USER} = 'limited' AND ExecutionStatus = 'Running'"
    ids = []
    with _replica(stack, monkeypatch, prefix) as one, _replica(stack, monkeypatch, prefix) as two:
        for n, app in enumerate((one, two), start=1):
            r = app.post("/v1/videos", json=body)
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
            await _visible(client, running, n)
        r = one.post("/v1/videos", json=body)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "user_concurrent"
        assert "2 queued or running jobs" in r.json()["error"]["message"]
        assert int(r.headers["Retry-After"]) > 0
        # Free one slot: concurrency allows another, but that is the 3rd submission this minute.
        await client.get_workflow_handle(ids[0]).terminate("test")
        await _visible(client, running, 1)
        r = two.post("/v1/videos", json=body)
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
        await _visible(client, running, 2)
        await client.get_workflow_handle(ids[1]).terminate("test")
        await _visible(client, running, 1)
        r = one.post("/v1/videos", json=body)
        assert r.status_code == 429 and r.json()["error"]["code"] == "user_per_minute", r.text
        # The window is counted in whole seconds, rounded up: at most 61.
        assert 0 < int(r.headers["Retry-After"]) <= 61
    await client.get_workflow_handle(ids[2]).terminate("test")


async def test_one_idempotency_key_makes_one_job_under_concurrent_retries(
    client: Client, api: httpx.Client
) -> None:
    body = {
        "prompt": "a kite over the sea",
        "size": "64x64",
        "seconds": 1,
        "num_inference_steps": 3,
        "seed": 5,
    }
    key = f"retry-{time.monotonic_ns()}"

    def post() -> httpx.Response:
        return api.post("/v1/videos", json=body, headers={"Idempotency-Key": key})

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: post(), range(10)))
    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    (job_id,) = ids
    count = await client.count_workflows(f"WorkflowId = '{job_id}'")
    assert count.count == 1
    assert wait_for(api, job_id)["status"] == "completed"
    # A late retry gets the finished job, marked as a replay; another body with the key is 409.
    late = post()
    assert late.status_code == 200 and late.json()["id"] == job_id
    assert late.headers["Idempotent-Replayed"] == "true"
    other = api.post("/v1/videos", json={**body, "seed": 6}, headers={"Idempotency-Key": key})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    bad = api.post("/v1/videos", json=body, headers={"Idempotency-Key": "k" * 300})
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["error"]["message"]


async def test_queued_jobs_show_position_and_estimated_start(
    client: Client, stack: Stack, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The estimate averages completed jobs' generation time: make sure there is one.
    assert wait_for(api, submit(api)["id"])["status"] == "completed"
    settings = gpu_worker_settings(stack, monkeypatch, "eta")
    queue = settings.gpu_task_queue("videogen-tiny")
    ids = await _queue(client, stack, queue, [("dev", "free"), ("dev", "free"), ("dev", "paid")])
    try:
        now = time.time()
        videos = [api.get(f"/v1/videos/{job_id}").json() for job_id in ids]
        assert [v["status"] for v in videos] == ["queued"] * 3
        # The paid job is first in line, the free ones follow in submission order.
        assert [v["queue_position"] for v in videos] == [1, 2, 0]
        etas = [v["estimated_start_at"] for v in videos]
        # Later in line never starts earlier (whole seconds: tiny jobs take a fraction).
        assert int(now) - 1 <= etas[2] <= etas[0] <= etas[1] <= int(now) + 60
    finally:
        for job_id in ids:
            await client.get_workflow_handle(job_id).terminate("test over")
