"""The workflow on the real stack: failure paths, and replay of recorded histories.

Replay guards determinism: a change to the workflow code that would break running workflows
fails here, on histories recorded from real runs (tests/histories) and on fresh ones.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from helpers import (
    assert_reference_video,
    direct_request,
    gpu_worker_settings,
    submit,
    wait_for,
    wait_step,
)
from imds import NOTICE, Metadata
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from api import jobs
from videogen import contracts as c
from videogen.settings import ApiKey, Settings
from videogen.stack import Stack
from videogen.temporal import data_converter
from workflows.video import VideoGeneration

HISTORIES = Path(__file__).parent / "histories"


@pytest.fixture
def client(stack_client: Client) -> Client:
    return stack_client


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_frames": 10}, "num_frames"),  # not 4k+1
        ({"width": 96, "height": 96}, "width, height"),  # a multiple of 16, not one it offers
    ],
)
async def test_invalid_input_fails_once_without_retry(
    client: Client, stack: Stack, api: httpx.Client, overrides: dict[str, int], field: str
) -> None:
    # The API never lets this through; a client starting workflows directly might: the GPU
    # activity refuses it as non-retryable input.
    req = direct_request(stack, **overrides)
    await jobs.start(client, req, ApiKey("k", "dev", "paid"))
    v = wait_for(api, req.job_id, timeout_s=60)
    assert v["status"] == "failed", v
    assert v["error"]["code"] == c.ErrorCode.INVALID_INPUT
    assert v["error"]["message"].startswith(f"{field}: "), v["error"]
    history = await client.get_workflow_handle(req.job_id).fetch_history()
    started = [e for e in history.events if e.HasField("activity_task_started_event_attributes")]
    assert len(started) == 2  # the GPU attempt (once, no retry) and the cleanup
    assert started[0].activity_task_started_event_attributes.attempt == 1


async def test_no_gpu_worker_for_model_fails_with_clear_error(
    client: Client, stack: Stack, api: httpx.Client
) -> None:
    req = direct_request(stack, gpu_task_queue="nobody-serves-this-queue", gpu_start_timeout_s=1.0)
    await jobs.start(client, req, ApiKey("k", "dev", "paid"))
    v = wait_for(api, req.job_id, timeout_s=60)
    assert v["status"] == "failed" and v["error"]["code"] == "NoWorkerAvailable", v


async def test_fresh_histories_replay(client: Client, api: httpx.Client) -> None:
    done = submit(api, seed=3)
    cancelled = submit(api, size="256x256", seconds=4, num_inference_steps=300)
    wait_for(api, cancelled["id"], ("in_progress",))
    api.post(f"/v1/videos/{cancelled['id']}/cancel")
    for vid, status in ((done["id"], "completed"), (cancelled["id"], "cancelled")):
        assert wait_for(api, vid)["status"] == status
        history = await client.get_workflow_handle(vid).fetch_history()
        # Encrypted (videogen.codec): the replayer decodes with the workers' keys.
        await Replayer(
            workflows=[VideoGeneration], data_converter=client.data_converter
        ).replay_workflow(history)


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_recorded_histories_replay(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    # Histories recorded since payloads are encrypted carry the development key's payloads.
    replayer = Replayer(workflows=[VideoGeneration], data_converter=data_converter())
    await replayer.replay_workflow(history)


def test_recorded_histories_exist() -> None:
    assert {p.stem for p in HISTORIES.glob("*.json")} >= {
        "completed",
        "cancelled",
        "cold_start",
        "deadline",
        "yielded",
        "made_room",
    }


@pytest.mark.slow  # fresh processes of the CLI
def test_replay_cli(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "videogen.cli", "replay", str(HISTORIES / "completed.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "replay ok" in out.stdout
    broken = tmp_path / "broken.json"
    text = (HISTORIES / "completed.json").read_text()
    # A history whose activity differs from what the code schedules must not replay.
    broken.write_text(text.replace(c.ACTIVITY_ENCODE, "encode_video_v0"))
    bad = subprocess.run(
        [sys.executable, "-m", "videogen.cli", "replay", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0


async def _finish_on_a_fresh_worker(
    settings: Settings, api: httpx.Client, job_id: str
) -> dict[str, object]:
    from worker_gpu import main as gpu_main

    stop = asyncio.Event()
    fresh = asyncio.ensure_future(gpu_main.run(settings, stop))
    try:
        v = await asyncio.to_thread(wait_for, api, job_id)
    finally:
        stop.set()
        assert await asyncio.wait_for(fresh, timeout=60) == 0
    return v


async def test_spot_notice_hands_the_job_over_and_stops_the_worker(
    client: Client, stack: Stack, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker_gpu import main as gpu_main

    imds = Metadata(v2=True)
    try:
        settings = gpu_worker_settings(
            stack,
            monkeypatch,
            "spot",
            checkpoint_every_steps=100,
            spot_notice_url=imds.url,
            spot_notice_poll_s=0.1,
        )
        req = direct_request(
            stack,
            gpu_task_queue=settings.gpu_task_queue("videogen-tiny"),
            width=128,
            height=128,
            num_inference_steps=100,
            seed=8,
        )
        await jobs.start(client, req, ApiKey("k", "dev", "paid"))
        worker = asyncio.ensure_future(gpu_main.run(settings))
        v = await asyncio.to_thread(wait_step, api, req.job_id, 5)
        imds.notice = NOTICE
        assert await asyncio.wait_for(worker, timeout=60) == 0  # handed over, then stopped
    finally:
        imds.server.shutdown()
    settings = settings.model_copy(update={"spot_notice_url": ""})
    v = await _finish_on_a_fresh_worker(settings, api, req.job_id)
    # No checkpoint was due (every 100 steps): the notice's own checkpoint saved everything.
    assert v["status"] == "completed" and v["attempt"] == 2, v
    assert v["resumed_from_step"] >= 5 and v["wasted_steps"] == 0
    body = {
        "size": "128x128",
        "seconds": 1,
        "num_inference_steps": 100,
        "seed": 8,
        "prompt": "direct start",
    }
    assert_reference_video(api, req.job_id, body)


async def test_poisoned_worker_exits_and_the_job_resumes_on_a_fresh_one(
    client: Client, stack: Stack, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU worker whose model turns out NaN at step 6 fails the attempt, keeps its last good
    checkpoint, and exits with EXIT_POISONED; a fresh worker resumes the job from step 6."""
    from activities import pipeline
    from worker_gpu import main as gpu_main

    settings = gpu_worker_settings(stack, monkeypatch, "poison")
    real_load = pipeline.load_pipeline

    def poisoned_load(spec: object, device: str, placement: object) -> pipeline.LoadedModel:
        model = real_load(spec, device, placement)  # type: ignore[arg-type]
        forward, calls = model.pipe.transformer.forward, [0]

        def nan_after_six_steps(*args: object, **kwargs: object) -> object:
            out = forward(*args, **kwargs)
            calls[0] += 1
            if calls[0] > 12:  # two passes a step
                out[0].fill_(float("nan"))
            return out

        model.pipe.transformer.forward = nan_after_six_steps
        return model

    monkeypatch.setattr(pipeline, "load_pipeline", poisoned_load)
    req = direct_request(
        stack,
        gpu_task_queue=settings.gpu_task_queue("videogen-tiny"),
        num_inference_steps=10,
        seed=7,
    )
    await jobs.start(client, req, ApiKey("k", "dev", "paid"))
    assert await asyncio.wait_for(gpu_main.run(settings), timeout=120) == gpu_main.EXIT_POISONED
    v = api.get(f"/v1/videos/{req.job_id}").json()
    assert v["status"] == "in_progress", v  # waiting for a worker, not failed

    monkeypatch.setattr(pipeline, "load_pipeline", real_load)
    v = await _finish_on_a_fresh_worker(settings, api, req.job_id)
    assert v["status"] == "completed" and v["attempt"] == 2, v
    assert v["resumed_from_step"] == 6
    body = {
        "size": "64x64",
        "seconds": 1,
        "num_inference_steps": 10,
        "seed": 7,
        "prompt": "direct start",
    }
    assert_reference_video(api, req.job_id, body)
