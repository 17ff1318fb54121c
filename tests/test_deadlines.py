"""Deadlines (`expires_after_s`) on the real stack: a job no GPU took in time ends without
using one, a render still going at its deadline is stopped and its GPU freed, both with code
`deadline_exceeded`; the field is checked at the edge."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from helpers import activity_events, direct_request, submit, wait_for
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from api import jobs
from videogen import contracts as c
from videogen.settings import ApiKey, TierPolicy
from videogen.stack import Stack
from videogen.temporal import connect

DEV = ApiKey("k", "dev", "paid")


@pytest.fixture
async def client(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Client:
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{stack.temporal_port}")
    return await connect(wait_s=10)


async def gpu_attempts_started(client: Client, job: str) -> int:
    history = await client.get_workflow_handle(job).fetch_history()
    started = EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    return len(activity_events(history, c.ACTIVITY_GENERATE, started))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "expires_after_s: Input should be greater than or equal to 1"),
        (7 * 86400 + 1, "expires_after_s: Input should be less than or equal to 604800"),
        ("soon", "expires_after_s: Input should be a valid integer"),
    ],
)
def test_a_bad_deadline_is_a_400_naming_the_field(
    api: httpx.Client, value: object, message: str
) -> None:
    r = api.post("/v1/videos", json={"prompt": "a kite", "expires_after_s": value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "expires_after_s"
    assert r.json()["error"]["message"].startswith(message)


def test_a_job_done_in_time_completes_and_shows_its_deadline(api: httpx.Client) -> None:
    v = submit(api, expires_after_s=600)
    assert v["deadline_at"] == v["created_at"] + 600
    done = wait_for(api, v["id"])
    # The answer to the POST uses the API's clock, later reads the server's start time.
    assert done["status"] == "completed" and abs(done["deadline_at"] - v["deadline_at"]) <= 1
    assert submit(api)["deadline_at"] is None


async def test_a_job_no_gpu_took_by_its_deadline_ends_without_using_one(
    stack: Stack, api: httpx.Client, client: Client
) -> None:
    # A queue no worker polls: the job waits, as behind a full fleet.
    req = direct_request(stack, gpu_task_queue=f"nobody-{uuid.uuid4().hex[:8]}", deadline_s=2)
    started = time.monotonic()
    await jobs.start(client, req, DEV)
    v = wait_for(api, req.job_id, timeout_s=30)
    took = time.monotonic() - started
    assert v["status"] == "failed", v
    assert v["error"]["code"] == "deadline_exceeded"
    assert v["error"]["message"].startswith("not started within its deadline (2 s")
    assert 2 <= took < 10, took
    assert await gpu_attempts_started(client, req.job_id) == 0


async def test_a_render_running_at_its_deadline_is_stopped_and_frees_its_gpu(
    stack: Stack, api: httpx.Client, client: Client
) -> None:
    req = direct_request(
        stack, gpu_task_queue=stack.gpu_task_queue(), num_inference_steps=500, deadline_s=4
    )
    await jobs.start(client, req, DEV)
    v = wait_for(api, req.job_id, timeout_s=60)
    assert v["status"] == "failed" and v["error"]["code"] == "deadline_exceeded", v
    stopped = v["error"]["message"]
    assert stopped.startswith("stopped at step ") and stopped.split()[3] != "0", stopped
    assert int(stopped.split()[3]) < 500
    assert await gpu_attempts_started(client, req.job_id) == 1
    # Kept with the stack's data (tests/histories/deadline.json is one, replayed by
    # test_workflow.py).
    history = await client.get_workflow_handle(req.job_id).fetch_history()
    (stack.data_dir / f"deadline-{req.job_id}.json").write_text(history.to_json())
    # The GPU worker is free again at once: the next job starts and completes.
    nxt = submit(api, seed=5)
    assert wait_for(api, nxt["id"], timeout_s=60)["status"] == "completed"


async def test_a_batch_job_not_rendered_within_its_window_ends_window_expired(
    stack: Stack, api: httpx.Client, client: Client
) -> None:
    req = direct_request(
        stack,
        gpu_task_queue=f"nobody-{uuid.uuid4().hex[:8]}",
        deadline_s=2,
        deadline_is_window=True,
    )
    await jobs.start(client, req, DEV)
    v = wait_for(api, req.job_id, timeout_s=30)
    assert v["status"] == "failed" and v["error"]["code"] == "window_expired", v
    assert v["error"]["message"].startswith("not started within its tier's completion window (2 s")
    assert await gpu_attempts_started(client, req.job_id) == 0


@pytest.mark.parametrize(
    ("window", "expires_after_s", "expected"),
    [
        (0, None, {"deadline_s": 0.0}),
        (0, 60, {"deadline_s": 60.0}),
        (3600, None, {"deadline_s": 3600, "deadline_is_window": True}),
        (3600, 60, {"deadline_s": 60.0}),  # the sooner one binds, and names the code
        (60, 3600, {"deadline_s": 60, "deadline_is_window": True}),
    ],
)
def test_the_sooner_of_the_window_and_expires_after_s_is_the_deadline(
    window: float, expires_after_s: int | None, expected: dict[str, object]
) -> None:
    from api.routers.videos import _deadline

    policy = TierPolicy(priority=5, completion_window_s=window)
    assert _deadline(policy, expires_after_s) == expected
