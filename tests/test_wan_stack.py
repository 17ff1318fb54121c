"""A directory of the published Wan2.1 1.3B shape (every width as published, depth cut to 2
blocks: `small_13b`) served by a stack of its own: a job through the API, a GPU worker process
that loads the directory as it would a real one and is SIGKILLed mid-render, the standby
worker resuming from the last checkpoint, the CPU worker's encode, and the MP4 downloaded
through the API equal to an uninterrupted run's, frames and bytes."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from helpers import (
    EVERY_STEPS,
    api_client,
    get_video,
    preemption_env,
    private_stack,
    wait_for,
    wait_step,
)
from temporalio.client import Client

from activities import media, pipeline
from videogen import catalog
from videogen.stack import Stack, gpu_worker_pid

# The published model draws 832x480; its directory here also offers 32x32 (its videogen.json
# is the one thing changed), where a step takes well under a second on the CPU.
SIZE = "32x32"
STEPS = 40
SEED = 13
PROMPT = "a red ball bouncing"


@pytest.fixture(scope="module")
def served_13b(small_13b: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared directory, its weights linked rather than copied, with 32x32 offered."""
    out = tmp_path_factory.mktemp("served-13b") / "model"
    shutil.copytree(small_13b, out, copy_function=os.symlink)
    spec_file = out / catalog.SPEC_FILE
    stated = json.loads(spec_file.read_text())
    stated["serving"]["sizes"] = [*stated["serving"]["sizes"], SIZE]
    spec_file.unlink()  # a link into the shared directory: replace it, do not write through
    spec_file.write_text(json.dumps(stated))
    return out


@pytest.fixture(scope="module")
def wstack(served_13b: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {**preemption_env("wan13"), "VIDEOGEN_MODEL": str(served_13b)}
    with private_stack(tmp_path_factory, "wan13", env, gpu_workers=2) as s:
        yield s


@pytest.fixture
def wapi(wstack: Stack) -> Iterator[httpx.Client]:
    with api_client(wstack) as client:
        yield client


@pytest.fixture
async def wclient(wstack: Stack) -> AsyncIterator[Client]:
    yield await wstack.client()


async def test_a_1_3b_shaped_job_survives_a_sigkill_and_downloads_as_the_uninterrupted_mp4(
    wstack: Stack, wapi: httpx.Client, wclient: Client, served_13b: Path
) -> None:
    wstack.wait_gpu_workers(2)  # the standby is up before the kill
    body = {"prompt": PROMPT, "size": SIZE, "seconds": 1, "num_inference_steps": STEPS}
    r = wapi.post("/v1/videos", json={**body, "seed": SEED})
    assert r.status_code == 200, r.text
    job = r.json()["id"]
    reached = wait_step(wapi, job, 3 * EVERY_STEPS + 1, timeout_s=180)["step"]
    pid = await gpu_worker_pid(wclient, job)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    v = wait_for(wapi, job, timeout_s=300)
    assert v["status"] == "completed" and v["attempt"] == 2, v
    assert v["resumed_from_step"] >= reached - EVERY_STEPS - 1, v

    spec = catalog.spec_for_path(served_13b)
    model = pipeline.load_pipeline(spec, "cpu")
    params = pipeline.GenerationParams(
        prompt=PROMPT,
        negative_prompt="",
        seed=SEED,
        width=32,
        height=32,
        num_frames=spec.num_frames(1),
        num_inference_steps=STEPS,
        guidance_scale=spec.guidance_scale,
    )
    reference = pipeline.generate(model, params)
    assert get_video(wapi, job)["frames_sha256"] == media.frames_sha256(reference)
    content = wapi.get(f"/v1/videos/{job}/content").content
    assert media.decode_mp4(content).shape == (spec.num_frames(1), 32, 32, 3)
    # The CPU worker's encode is this process's, byte for byte.
    assert content == media.encode_mp4(reference, spec.fps)
    wstack.check()  # the supervisor brought the killed worker back
