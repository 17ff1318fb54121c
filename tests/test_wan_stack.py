"""A directory of the published Wan2.1 1.3B shape (every width as published, depth cut to 2
blocks: `small_13b`) through the whole stack: a job started on Temporal, run by a GPU worker
that loads the directory as it would a real one, stopped mid-render, resumed by a fresh
worker from its checkpoint, encoded by the CPU worker, read back through the API as an MP4
whose frames equal an uninterrupted run's."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx
import pytest
from helpers import direct_request, gpu_worker_settings, wait_for, wait_step
from temporalio.client import Client

from activities import media, pipeline
from api import jobs
from videogen import catalog
from videogen.settings import ApiKey
from videogen.stack import Stack

# A size the published model does not offer (it draws 832x480): a direct start may ask for any
# multiple of 16, and at 32x32 a step takes well under a second on the CPU.
SIZE = 32


async def test_a_1_3b_shaped_job_resumes_on_another_worker_and_downloads_as_mp4(
    stack_client: Client,
    stack: Stack,
    api: httpx.Client,
    small_13b: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker_gpu import main as gpu_main

    spec = catalog.spec_for_path(small_13b)
    settings = gpu_worker_settings(stack, monkeypatch, "wan13", model=str(small_13b))
    req = direct_request(
        stack,
        model=spec.name,
        gpu_task_queue=settings.gpu_task_queue(spec.name),
        width=SIZE,
        height=SIZE,
        num_inference_steps=12,
        guidance_scale=spec.guidance_scale,
        prompt="a red ball bouncing",
    )
    await jobs.start(stack_client, req, ApiKey("k", "dev", "paid"))
    stop = asyncio.Event()
    worker = asyncio.ensure_future(gpu_main.run(settings, stop))
    await asyncio.to_thread(wait_step, api, req.job_id, 4, 180)
    stop.set()
    assert await asyncio.wait_for(worker, timeout=120) == 0

    stop = asyncio.Event()
    fresh = asyncio.ensure_future(gpu_main.run(settings, stop))
    try:
        v = await asyncio.to_thread(wait_for, api, req.job_id, timeout_s=300)
    finally:
        stop.set()
        assert await asyncio.wait_for(fresh, timeout=120) == 0
    assert v["status"] == "completed" and v["attempt"] == 2, v
    assert v["resumed_from_step"] >= 4 and v["wasted_steps"] == 0, v

    model = pipeline.load_pipeline(spec, "cpu")
    params = pipeline.GenerationParams.from_request(req, spec)
    assert dataclasses.astuple(params)[3:6] == (SIZE, SIZE, req.num_frames)
    reference = pipeline.generate(model, params)
    assert v["frames_sha256"] == media.frames_sha256(reference)
    content = api.get(f"/v1/videos/{req.job_id}/content").content
    assert media.decode_mp4(content).shape == (req.num_frames, SIZE, SIZE, 3)
    # The CPU worker's encode is this process's, byte for byte.
    assert content == media.encode_mp4(reference, req.fps)
