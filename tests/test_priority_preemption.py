"""Priority preemption on the real stack: a paid job that waits past its tier's `max_wait_s`
behind a free render takes that render's GPU at a checkpoint; the free job waits in phase
`yielded`, resumes, and still makes exactly the uninterrupted run's video; a job is never made
to yield more often than its tier allows; requests a job must refuse are refused.

The stack has one GPU worker, so one free render fills the fleet.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import httpx
import pytest
from helpers import (
    JOB,
    activity_events,
    api_client,
    assert_reference_video,
    direct_request,
    get_video,
    gpu_metrics,
    preemption_env,
    private_stack,
    value,
    wait_for,
    wait_step,
)
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer

from api import jobs
from videogen import contracts as c
from videogen.settings import ApiKey, TierPolicy
from videogen.stack import Stack
from workflows.video import VideoGeneration

PAID_KEY, FREE_KEY = "prio-paid-key", "prio-free-key"
MAX_WAIT_S = 2.0
MAX_YIELDS = 1
# The free render: long enough for two paid jobs to wait behind it (about 20 s here).
FREE = {**JOB, "size": "64x64", "num_inference_steps": 400}
# The paid job: long enough that the free one is seen waiting while it runs.
PAID = {"prompt": "a blue ball moving up", "size": "64x64", "seconds": 1, "num_inference_steps": 30}


@pytest.fixture(scope="module")
def ystack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = preemption_env("yield")
    env["VIDEOGEN_API_KEYS"] = f"{PAID_KEY}:payer:paid,{FREE_KEY}:freeloader:free"
    env["VIDEOGEN_TIERS"] = json.dumps(
        {
            "paid": {"priority": 2, "max_wait_s": MAX_WAIT_S},
            "free": {"priority": 4, "max_yields": MAX_YIELDS, "min_run_s": 0},
        }
    )
    with private_stack(tmp_path_factory, "yield", env, gpu_workers=1, worker_metrics=True) as s:
        yield s


@pytest.fixture
def paid(ystack: Stack) -> Iterator[httpx.Client]:
    with api_client(ystack, PAID_KEY) as client:
        yield client


@pytest.fixture
def free(ystack: Stack) -> Iterator[httpx.Client]:
    with api_client(ystack, FREE_KEY) as client:
        yield client


@pytest.fixture
async def tclient(ystack: Stack) -> AsyncIterator[Client]:
    yield await ystack.client()


def post(api: httpx.Client, body: dict[str, object]) -> str:
    r = api.post("/v1/videos", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def gpu_events(client: Client, job_id: str) -> tuple[datetime, list[datetime], datetime]:
    """(workflow start, each GPU attempt's start, the GPU activity's completion): server time."""
    history = await client.get_workflow_handle(job_id).fetch_history()
    started = activity_events(
        history, c.ACTIVITY_GENERATE, EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    )
    completed = activity_events(
        history, c.ACTIVITY_GENERATE, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    )
    assert len(completed) == 1, f"{job_id}: one GPU activity completes"
    # A retried activity records one started event: its last attempt's (its `attempt` says).
    return (
        history.events[0].event_time.ToDatetime(),
        [e.event_time.ToDatetime() for e in started],
        completed[0].event_time.ToDatetime(),
    )


async def activities_scheduled(client: Client, job_id: str, name: str) -> int:
    history = await client.get_workflow_handle(job_id).fetch_history()
    return len(activity_events(history, name, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED))


def wait_phase(api: httpx.Client, job_id: str, phase: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = get_video(api, job_id)
        if v["phase"] == phase:
            return v
        assert v["status"] in ("queued", "in_progress"), v
        time.sleep(0.02)
    raise AssertionError(f"{job_id} never reached phase {phase}")


async def test_a_paid_job_takes_a_free_jobs_gpu_which_resumes_exactly(
    ystack: Stack, paid: httpx.Client, free: httpx.Client, tclient: Client
) -> None:
    body = {**FREE, "seed": 211}
    victim = post(free, body)
    wait_step(free, victim, 6)
    first = post(paid, {**PAID, "seed": 1})

    # The free job hands its GPU over at a step boundary, with a checkpoint, and waits.
    yielded = wait_phase(free, victim, "yielded")
    assert yielded["status"] == "in_progress" and yielded["yields"] == 1, yielded
    assert wait_for(paid, first)["status"] == "completed"
    begun, starts, _ = await gpu_events(tclient, first)
    waited = (starts[0] - begun).total_seconds()
    print(f"\npaid job: GPU attempt started {waited:.2f} s after submission")
    # It waited its tier's max_wait_s, then one yield poll, one step and one checkpoint.
    assert MAX_WAIT_S <= waited < MAX_WAIT_S + 8.0, waited

    # A second paid job finds the free one (resumed) at its yield limit: it waits its turn.
    wait_attempt(free, victim, 2)
    second = post(paid, {**PAID, "seed": 2})
    v = wait_for(free, victim)
    assert v["status"] == "completed", v
    assert v["yields"] == MAX_YIELDS and v["attempt"] == 2, v
    assert v["wasted_steps"] == 0 and v["resumed_from_step"] >= 6, v
    assert_reference_video(free, victim, body)
    assert wait_for(paid, second)["status"] == "completed"
    _, _, victim_done = await gpu_events(tclient, victim)
    _, second_starts, _ = await gpu_events(tclient, second)
    assert second_starts[0] >= victim_done, "the second paid job took the GPU from the free one"
    asked = await activities_scheduled(tclient, second, c.ACTIVITY_MAKE_ROOM)
    assert asked >= 1, "the second paid job asked for room (and was refused)"

    # The resuming worker counted the yield as a preemption, by its cause.
    assert value(gpu_metrics(ystack), "videogen_preemptions_total", kind="yielded") == 1
    # The new paths (update, memo, timers, make_room) replay deterministically.
    replayer = Replayer(workflows=[VideoGeneration], data_converter=tclient.data_converter)
    for job_id in (victim, first, second):
        history = await tclient.get_workflow_handle(job_id).fetch_history()
        await replayer.replay_workflow(history)


async def test_a_job_refuses_a_yield_it_must_not_make(
    paid: httpx.Client, free: httpx.Client, tclient: Client
) -> None:
    job = post(free, {**PAID, "seed": 3, "num_inference_steps": 200})
    handle = tclient.get_workflow_handle(job)
    wait_step(free, job, 2)
    refused = {
        5: "priority 4 is not lower than the asker's 5",
        4: "priority 4 is not lower than the asker's 4",
    }
    for priority, message in refused.items():
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await handle.execute_update(
                c.UPDATE_YIELD, c.YieldRequest(by_job_id="video_x", priority=priority)
            )
        assert refusal(err.value) == message
    answer = await handle.execute_update(
        c.UPDATE_YIELD, c.YieldRequest(by_job_id="video_x", priority=2), result_type=c.YieldAnswer
    )
    assert answer.attempt == 1
    with pytest.raises(WorkflowUpdateFailedError) as err:  # asked twice: one yield
        await handle.execute_update(c.UPDATE_YIELD, c.YieldRequest("video_y", 2))
    assert refusal(err.value) == "attempt 1 is already yielding"
    assert wait_phase(free, job, "yielded")["yields"] == 1
    resumed = wait_attempt(free, job, 2)  # on the same worker: no one else was waiting
    assert resumed["yields"] == 1 and resumed["wasted_steps"] == 0, resumed
    with pytest.raises(WorkflowUpdateFailedError) as err:
        await handle.execute_update(c.UPDATE_YIELD, c.YieldRequest("video_z", 2))
    assert refusal(err.value) == "yielded 1 time(s); its tier allows 1"
    assert free.post(f"/v1/videos/{job}/cancel").status_code == 200
    assert wait_for(free, job)["status"] == "cancelled"


async def test_a_job_yields_only_after_its_min_run_s(
    ystack: Stack, free: httpx.Client, tclient: Client
) -> None:
    req = direct_request(
        ystack, user="freeloader", num_inference_steps=200, max_yields=1, min_run_s=600
    )
    await jobs.start(tclient, req, ApiKey("k", "freeloader", "free"), TierPolicy(priority=4))
    wait_step(free, req.job_id, 2)
    with pytest.raises(WorkflowUpdateFailedError) as err:
        await tclient.get_workflow_handle(req.job_id).execute_update(
            c.UPDATE_YIELD, c.YieldRequest("video_x", 2)
        )
    message = refusal(err.value)
    assert message.startswith("ran ") and message.endswith(" of its attempt; must run 600 s")
    assert free.post(f"/v1/videos/{req.job_id}/cancel").status_code == 200
    assert wait_for(free, req.job_id)["status"] == "cancelled"


def refusal(err: WorkflowUpdateFailedError) -> str:
    """Why the job refused, as the validator said it."""
    assert isinstance(err.cause, ApplicationError), err
    assert err.cause.type == c.ErrorCode.YIELD_REFUSED
    return err.cause.message


def wait_attempt(api: httpx.Client, job_id: str, attempt: int, timeout_s: float = 60) -> dict:
    """Until the job's `attempt` denoises."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = get_video(api, job_id)
        if v["attempt"] >= attempt and v["phase"] == "denoising":
            return v
        time.sleep(0.02)
    raise AssertionError(f"{job_id}: attempt {attempt} never denoised")
