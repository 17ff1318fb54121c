"""The activities in isolation (temporalio's ActivityEnvironment), on the tiny model and a real
file store: outputs under per-attempt keys, non-retryable bad input, prompt cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import media, pipeline
from activities.diffusion import DiffusionActivities
from activities.postprocess import PostprocessActivities
from videogen import catalog
from videogen import contracts as c
from videogen.storage import FileStore


@pytest.fixture(scope="module")
def model() -> pipeline.LoadedModel:
    return pipeline.load_pipeline(catalog.TINY_SPEC, "cpu")


def _request(**overrides: object) -> c.VideoRequest:
    req = c.VideoRequest(
        job_id="video_unit", user="u", tier="paid", prompt="a kite", model="videogen-tiny",
        seed=3, width=64, height=64, seconds=1, fps=8, num_frames=9, num_inference_steps=3,
        guidance_scale=5.0, gpu_task_queue="gpu", cpu_task_queue="cpu",
    )
    return dataclasses.replace(req, **overrides)  # type: ignore[arg-type]


def _env(attempt: int = 1) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt, heartbeat_timeout=None)
    return env


async def test_generate_stores_frames_under_the_attempt_key(model: pipeline.LoadedModel,
                                                            tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    acts = DiffusionActivities(model, store)
    out = await _env(attempt=2).run(acts.generate_video, c.GenerateInput(_request()))
    assert out.frames_key == "frames/video_unit/attempt-2.npy" and out.attempt == 2
    frames = media.frames_from_bytes(store.get(out.frames_key))
    assert frames.shape == (9, 64, 64, 3)
    direct = pipeline.generate(model, pipeline.GenerationParams(
        prompt="a kite", negative_prompt="", seed=3, width=64, height=64, num_frames=9,
        num_inference_steps=3, guidance_scale=5.0))
    assert (frames == direct).all()

    # The CPU side turns them into the three outputs; cleanup removes the frames only.
    post = PostprocessActivities(store)
    enc = await ActivityEnvironment().run(post.encode_video, c.EncodeInput(
        job_id="video_unit", frames_key=out.frames_key, fps=8))
    assert media.probe_mp4(store.get(enc.video_key)).frames == 9
    assert enc.duration_s == pytest.approx(9 / 8)
    assert await ActivityEnvironment().run(post.cleanup_job, c.CleanupInput("video_unit")) == 1
    assert store.list("frames/") == [] and len(store.list("videos/video_unit/")) == 3


@pytest.mark.parametrize(("override", "fragment"), [
    ({"num_frames": 10}, "num_frames"),
    ({"width": 65}, "width"),
    ({"model": "other-model"}, "serves model"),
])
async def test_bad_input_is_not_retryable(model: pipeline.LoadedModel, tmp_path: Path,
                                          override: dict[str, object], fragment: str) -> None:
    acts = DiffusionActivities(model, FileStore(tmp_path))
    with pytest.raises(ApplicationError) as info:
        await _env().run(acts.generate_video, c.GenerateInput(_request(**override)))
    assert info.value.non_retryable and fragment in info.value.message
    assert FileStore(tmp_path).list() == []


async def test_cancel_stops_within_a_step(model: pipeline.LoadedModel, tmp_path: Path) -> None:
    acts = DiffusionActivities(model, FileStore(tmp_path))
    env = _env()
    steps: list[object] = []
    env.on_heartbeat = lambda *details: steps.append(details[0]["step"])
    req = _request(width=256, height=256, num_frames=33, num_inference_steps=500)
    task = asyncio.ensure_future(env.run(acts.generate_video, c.GenerateInput(req)))
    while not steps or steps[-1] < 1:  # wait until it is really denoising
        await asyncio.sleep(0.05)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=30)
    assert steps[-1] < 500
    assert FileStore(tmp_path).list() == []
    # The GPU is free again: the next job runs at once.
    out = await _env().run(acts.generate_video, c.GenerateInput(_request()))
    assert out.num_frames == 9
