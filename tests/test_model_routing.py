"""Several models on one fleet, through the whole stack: a catalog of two versions of the
built-in model (the second with other weights) and an alias over them, served by ONE GPU worker.

A job for the model the worker does not hold waits on its warm queue for the cold-start bound
(not at all if no worker polled that queue lately), then the worker switches models (a load
from disk the first time, from host memory when it switches back) and runs it; both kinds of
job complete, each on its own weights, and record the version they ran on. A job naming a
version or a model that is not served is a 400."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import (
    api_client,
    direct_request,
    get_video,
    gpu_metrics,
    private_stack,
    tiny_variant,
    value,
    wait_for,
)
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Replayer

from activities import media, pipeline
from api import jobs
from videogen import catalog, registry
from videogen import contracts as c
from videogen.settings import ApiKey
from videogen.stack import Stack
from workflows.video import VideoGeneration

pytestmark = pytest.mark.stack

COLD_AFTER_S = 3.0
# Scheduling slack on 2 loaded cores: Temporal's dispatch to the new warm queue's poller plus
# this test's own polling of the API.
SLACK_S = 5.0
BODY = {"prompt": "a kite over a beach", "size": "64x64", "seconds": 1, "seed": 5}
STEPS = 4


@pytest.fixture(scope="module")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("catalog")
    file = root / "models.json"
    file.write_text(
        json.dumps(
            {
                "default": "tiny",
                "models": {
                    "tiny": {"source": "builtin"},
                    "tiny-ft": {"source": str(tiny_variant(root / "tiny-ft"))},
                },
                "aliases": {"tiny-ab": {"tiny": 50, "tiny-ft": 50}},
            }
        )
    )
    return file


@pytest.fixture(scope="module")
def mstack(models_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "VIDEOGEN_TASK_QUEUE_PREFIX": f"models-{uuid.uuid4().hex[:8]}",
        "VIDEOGEN_MODELS": str(models_file),
        "VIDEOGEN_COLD_START_AFTER_S": str(COLD_AFTER_S),
        "VIDEOGEN_PROGRESS_INTERVAL_S": "0.1",
    }
    with private_stack(tmp_path_factory, "models", env, gpu_workers=1, worker_metrics=True) as s:
        s.wait_gpu_workers(1)
        yield s


@pytest.fixture
def mapi(mstack: Stack) -> Iterator[httpx.Client]:
    with api_client(mstack) as client:
        yield client


@pytest.fixture
async def mclient(mstack: Stack) -> AsyncIterator[Client]:
    yield await mstack.client()


def _reference_sha(served: registry.ServedModel) -> str:
    model = pipeline.load_pipeline(served.spec, "cpu")
    spec = served.spec
    width, height = spec.generated_dims(BODY["size"])  # type: ignore[arg-type]
    params = pipeline.GenerationParams(
        prompt=str(BODY["prompt"]),
        negative_prompt="",
        seed=int(BODY["seed"]),  # type: ignore[call-overload]
        width=width,
        height=height,
        num_frames=spec.num_frames(1),
        num_inference_steps=STEPS,
        guidance_scale=spec.guidance_scale,
    )
    return media.frames_sha256(pipeline.generate(model, params))


@dataclass
class GpuStart:
    waited_s: float  # from the job's start to its first GPU attempt's start
    load_s: float  # the warm-ups' model loads
    kinds: list[str]  # activity types in the order they were scheduled


async def _gpu_start(client: Client, job: str) -> GpuStart:
    handle = client.get_workflow_handle(job)
    started_at = first_gpu = None
    load_s = 0.0
    scheduled: dict[int, str] = {}
    async for ev in handle.fetch_history_events():
        t = ev.event_time.ToDatetime().timestamp()
        if ev.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started_at = t
        elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[ev.event_id] = ev.activity_task_scheduled_event_attributes.activity_type.name
        elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            kind = scheduled[ev.activity_task_started_event_attributes.scheduled_event_id]
            if kind == c.ACTIVITY_GENERATE and first_gpu is None:
                first_gpu = t
        elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attrs = ev.activity_task_completed_event_attributes
            if scheduled[attrs.scheduled_event_id] == c.ACTIVITY_WARM_UP:
                result = await client.data_converter.decode(attrs.result.payloads)
                load_s += result[0]["load_seconds"]
    assert started_at is not None and first_gpu is not None
    return GpuStart(first_gpu - started_at, load_s, list(scheduled.values()))


async def test_one_worker_serves_both_models_switching_within_the_cold_start_bound(
    mstack: Stack, mapi: httpx.Client, mclient: Client, models_file: Path
) -> None:
    reg = registry.load(str(models_file))
    tiny, ft = reg.models["tiny"], reg.models["tiny-ft"]
    shas = {}
    # The worker holds `tiny`: a job for it starts at once. Then `tiny-ft`, whose warm queue no
    # worker ever polled: a cold start at once (loaded from disk). Then `tiny` again, whose
    # queue was polled a moment ago: it waits the bound first (then back from host memory).
    for name, start in (("tiny", "warm"), ("tiny-ft", "cold-now"), ("tiny", "cold-after")):
        r = mapi.post("/v1/videos", json={**BODY, "model": name, "num_inference_steps": STEPS})
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["model"] == name and job["model_version"] == reg.models[name].ref
        done = wait_for(mapi, job["id"], timeout_s=120)
        assert done["status"] == "completed", done
        assert done["model_version"] == reg.models[name].ref
        g = await _gpu_start(mclient, job["id"])
        gen, warm_up = c.ACTIVITY_GENERATE, c.ACTIVITY_WARM_UP
        if start == "warm":
            assert g.kinds[:1] == [gen] and g.load_s == 0 and g.waited_s < COLD_AFTER_S, g
        elif start == "cold-now":
            assert g.kinds[:2] == [warm_up, gen] and g.load_s > 0, g
            assert g.waited_s <= g.load_s + SLACK_S, g
        else:  # offered warm, timed out unpicked, warmed up, offered again
            assert g.kinds[:3] == [gen, warm_up, gen] and g.load_s > 0, g
            assert COLD_AFTER_S <= g.waited_s <= COLD_AFTER_S + g.load_s + SLACK_S, g
        shas.setdefault(name, set()).add(done["frames_sha256"])
        history = await mclient.get_workflow_handle(job["id"]).fetch_history()
        await Replayer(
            workflows=[VideoGeneration], data_converter=mclient.data_converter
        ).replay_workflow(history)
        if start != "warm":  # kept with the stack's data (tests/histories/cold_start.json is one)
            (mstack.data_dir / f"{job['id']}.json").write_text(history.to_json())
    # Each job ran on its own weights: the frames of a direct run of that model.
    assert shas == {"tiny": {_reference_sha(tiny)}, "tiny-ft": {_reference_sha(ft)}}
    samples = gpu_metrics(mstack)
    assert value(samples, "videogen_cold_starts_total", model_version=ft.ref) == 1
    assert value(samples, "videogen_cold_starts_total", model_version=tiny.ref) == 1


async def test_a_job_of_another_version_never_runs_on_this_one(
    mstack: Stack, mapi: httpx.Client, mclient: Client, models_file: Path
) -> None:
    """The warm queue keeps versions apart; a job that reaches a worker of other weights anyway
    (sent to the wrong queue by hand) fails as ModelMismatch rather than run on them."""
    tiny = registry.load(str(models_file)).models["tiny"]  # what the worker holds after the above
    req = direct_request(mstack, model="tiny", model_version="f" * 64, num_inference_steps=1)
    assert req.gpu_task_queue.endswith(tiny.queue_key)
    await jobs.start(mclient, req, ApiKey("k", "dev", "paid"))
    v = wait_for(mapi, req.job_id, timeout_s=60)
    assert v["status"] == "failed" and v["error"]["code"] == c.ErrorCode.MODEL_MISMATCH, v
    assert "the job asks for ffffffffffff" in v["error"]["message"]


def test_an_alias_records_what_was_asked_and_the_version_that_ran(
    mstack: Stack, mapi: httpx.Client, models_file: Path
) -> None:
    reg = registry.load(str(models_file))
    r = mapi.post("/v1/videos", json={**BODY, "model": "tiny-ab", "num_inference_steps": 2})
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()
    expected = reg.resolve("tiny-ab", "dev").model  # the dev key's user
    assert (job["model"], job["model_version"]) == ("tiny-ab", expected.ref)
    done = wait_for(mapi, job["id"], timeout_s=120)
    assert done["status"] == "completed" and done["model_version"] == expected.ref
    assert get_video(mapi, job["id"])["model"] == "tiny-ab"


def test_a_version_or_model_not_served_is_a_400_listing_what_is(
    mapi: httpx.Client, models_file: Path
) -> None:
    ft = registry.load(str(models_file)).models["tiny-ft"]
    for asked, says in (
        ("tiny-ft@0000000000aa", f"served: {ft.ref}"),
        ("wan2.1", "allowed: tiny, tiny-ft, tiny-ab"),
    ):
        r = mapi.post("/v1/videos", json={**BODY, "model": asked})
        assert r.status_code == 400, r.text
        assert says in r.json()["error"]["message"]
    pinned = mapi.post("/v1/videos", json={**BODY, "model": ft.ref, "num_inference_steps": 1})
    assert pinned.status_code == 200, pinned.text
    done = wait_for(mapi, pinned.json()["id"], timeout_s=120)
    assert done["status"] == "completed" and done["model_version"] == ft.ref
    listed = mapi.get("/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["tiny", "tiny-ft", "tiny-ab"]
    assert catalog.TINY_SPEC.default_size in listed[0]["sizes"]
