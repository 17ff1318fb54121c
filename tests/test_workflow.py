"""The workflow on the real stack: failure paths, and replay of recorded histories.

Replay guards determinism: a change to the workflow code that would break running workflows
fails here, on histories recorded from real runs (tests/histories) and on fresh ones.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from helpers import submit, wait_for
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from api import jobs
from videogen import contracts as c
from videogen.settings import ApiKey
from videogen.stack import Stack
from videogen.temporal import connect
from workflows.video import VideoGeneration

HISTORIES = Path(__file__).parent / "histories"


@pytest_asyncio.fixture(scope="session")
async def client(stack: Stack) -> AsyncIterator[Client]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{stack.temporal_port}")
        yield await connect(wait_s=10)


def _request(stack: Stack, **overrides: object) -> c.VideoRequest:
    prefix = stack.child_env()["VIDEOGEN_TASK_QUEUE_PREFIX"]
    fields: dict[str, object] = dict(
        job_id=f"video_{uuid.uuid4().hex}", user="dev", tier="paid", prompt="direct start",
        model="videogen-tiny", seed=1, width=64, height=64, seconds=1, fps=8, num_frames=9,
        num_inference_steps=2, guidance_scale=5.0, gpu_task_queue=f"{prefix}-gpu-videogen-tiny",
        cpu_task_queue=f"{prefix}-cpu", progress_interval_s=0.1,
    )
    fields.update(overrides)
    return c.VideoRequest(**fields)  # type: ignore[arg-type]


async def test_invalid_input_fails_once_without_retry(client: Client, stack: Stack,
                                                      api: httpx.Client) -> None:
    # The API never lets this through; a client starting workflows directly might. 10 frames is
    # not 4k+1: the GPU activity refuses it as non-retryable input.
    req = _request(stack, num_frames=10)
    await jobs.start(client, req, ApiKey("k", "dev", "paid"))
    v = wait_for(api, req.job_id, timeout_s=60)
    assert v["status"] == "failed", v
    assert v["error"]["code"] == c.ERR_INVALID_INPUT
    assert "num_frames" in v["error"]["message"]
    history = await client.get_workflow_handle(req.job_id).fetch_history()
    started = [e for e in history.events if e.HasField("activity_task_started_event_attributes")]
    assert len(started) == 2  # the GPU attempt (once, no retry) and the cleanup
    assert started[0].activity_task_started_event_attributes.attempt == 1


async def test_no_gpu_worker_for_model_fails_with_clear_error(client: Client, stack: Stack,
                                                              api: httpx.Client) -> None:
    req = _request(stack, gpu_task_queue="nobody-serves-this-queue", gpu_start_timeout_s=1.0)
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
        await Replayer(workflows=[VideoGeneration]).replay_workflow(history)


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_recorded_histories_replay(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    await Replayer(workflows=[VideoGeneration]).replay_workflow(history)


def test_recorded_histories_exist() -> None:
    assert {p.stem for p in HISTORIES.glob("*.json")} >= {"completed", "cancelled"}


def test_replay_cli(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "videogen.cli", "replay",
                          str(HISTORIES / "completed.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "replay ok" in out.stdout
    broken = tmp_path / "broken.json"
    text = (HISTORIES / "completed.json").read_text()
    # A history whose activity differs from what the code schedules must not replay.
    broken.write_text(text.replace(c.ACTIVITY_ENCODE, "encode_video_v0"))
    bad = subprocess.run([sys.executable, "-m", "videogen.cli", "replay", str(broken)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
