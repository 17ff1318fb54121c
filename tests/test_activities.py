"""The activities in isolation (temporalio's ActivityEnvironment), on the tiny model and a real
file store: outputs under per-attempt keys, non-retryable bad input, prompt cancellation."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import unit_request
from temporalio.activity import ActivityCancellationDetails
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import media, pipeline
from activities.checkpoint import CheckpointPolicy
from activities.diffusion import DiffusionActivities
from activities.postprocess import PostprocessActivities
from videogen import catalog, metrics
from videogen import contracts as c
from videogen.storage import FileStore, StorageError


@pytest.fixture(scope="module")
def model() -> pipeline.LoadedModel:
    return pipeline.load_pipeline(catalog.TINY_SPEC, "cpu")


def _request(**overrides: object) -> c.VideoRequest:
    return unit_request(**overrides)


def _env(attempt: int = 1) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt, heartbeat_timeout=None)
    return env


async def test_generate_stores_frames_under_the_attempt_key(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    store = FileStore(tmp_path)
    acts = DiffusionActivities(model, store)
    out = await _env(attempt=2).run(acts.generate_video, c.GenerateInput(_request()))
    assert out.frames_key == "frames/video_unit/attempt-2.npy" and out.attempt == 2
    frames = media.frames_from_bytes(store.get(out.frames_key))
    assert frames.shape == (9, 64, 64, 3)
    direct = pipeline.generate(
        model,
        pipeline.GenerationParams(
            prompt="a kite",
            negative_prompt="",
            seed=3,
            width=64,
            height=64,
            num_frames=9,
            num_inference_steps=3,
            guidance_scale=5.0,
        ),
    )
    assert (frames == direct).all()

    # The CPU side turns them into the three outputs; cleanup removes the frames only.
    post = PostprocessActivities(store)
    enc = await ActivityEnvironment().run(
        post.encode_video,
        c.EncodeInput(
            job_id="video_unit", frames_key=out.frames_key, fps=8, frames_sha256=out.frames_sha256
        ),
    )
    assert out.frames_sha256 == enc.frames_sha256 == media.frames_sha256(direct)
    assert media.probe_mp4(store.get(enc.video_key)).frames == 9
    assert enc.duration_s == pytest.approx(9 / 8)
    assert store.list(c.checkpoints_prefix("video_unit")), "the default policy checkpoints"
    removed = await ActivityEnvironment().run(post.cleanup_job, c.CleanupInput("video_unit"))
    assert removed >= 2
    assert store.list("frames/") == [] and store.list("checkpoints/") == []
    assert len(store.list("videos/video_unit/")) == 3


async def test_a_published_video_never_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encode retried after its first attempt stored the outputs (its completion lost), on
    an encoder that writes other bytes: the stored files stay, and the result names them."""
    store = FileStore(tmp_path)
    frames = np.random.default_rng(5).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    store.put("frames/video_once/attempt-1.npy", media.frames_to_bytes(frames))
    post = PostprocessActivities(store)
    inp = c.EncodeInput(
        job_id="video_once",
        frames_key="frames/video_once/attempt-1.npy",
        fps=8,
        frames_sha256=media.frames_sha256(frames),
    )
    first = await ActivityEnvironment().run(post.encode_video, inp)
    published = {key: store.get(key) for key in store.list("videos/video_once/")}
    assert len(published) == 3

    monkeypatch.setattr(media, "encode_mp4", lambda f, fps: b"other bytes")
    monkeypatch.setattr(media, "make_thumbnail", lambda f: b"other thumbnail")
    retried = await ActivityEnvironment().run(post.encode_video, inp)
    assert {key: store.get(key) for key in store.list("videos/video_once/")} == published
    assert retried == first
    assert hashlib.sha256(store.get(retried.video_key)).hexdigest() == retried.video_sha256


async def test_damaged_frames_fail_the_encode_for_good(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    frames = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    store.put("frames/video_bad/attempt-1.npy", media.frames_to_bytes(frames))
    inp = c.EncodeInput(
        job_id="video_bad",
        frames_key="frames/video_bad/attempt-1.npy",
        fps=8,
        frames_sha256="0" * 64,
    )
    with pytest.raises(ApplicationError, match="damaged") as err:
        await ActivityEnvironment().run(PostprocessActivities(store).encode_video, inp)
    assert err.value.type == c.ErrorCode.FRAMES_CORRUPT and err.value.non_retryable
    assert store.list("videos/video_bad/") == []


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"num_frames": 10}, "num_frames"),
        ({"width": 65}, "width"),
        ({"model": "other-model"}, "serves model"),
    ],
)
async def test_bad_input_is_not_retryable(
    model: pipeline.LoadedModel, tmp_path: Path, override: dict[str, object], fragment: str
) -> None:
    acts = DiffusionActivities(model, FileStore(tmp_path))
    with pytest.raises(ApplicationError) as info:
        await _env().run(acts.generate_video, c.GenerateInput(_request(**override)))
    assert info.value.non_retryable and fragment in info.value.message
    assert FileStore(tmp_path).list() == []


async def test_cancel_stops_within_a_step(model: pipeline.LoadedModel, tmp_path: Path) -> None:
    acts = DiffusionActivities(model, FileStore(tmp_path))
    env = _env()
    steps: list[object] = []
    env.on_heartbeat = lambda *details: steps.append(details[0].get("reached_step", 0))
    req = _request(width=256, height=256, num_frames=33, num_inference_steps=500)
    task = asyncio.ensure_future(env.run(acts.generate_video, c.GenerateInput(req)))
    while not steps or steps[-1] < 1:  # wait until it is really denoising
        await asyncio.sleep(0.05)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=30)
    assert steps[-1] < 500
    # No frames; the checkpoints stay for the workflow's cleanup (they may yet be resumed).
    assert all(k.startswith("checkpoints/") for k in FileStore(tmp_path).list())
    # The GPU is free again: the next job runs at once.
    out = await _env().run(acts.generate_video, c.GenerateInput(_request()))
    assert out.num_frames == 9


# -- checkpoints, preemption, poisoned state -------------------------------------------------

STEPS_POLICY = CheckpointPolicy(mode="steps", every_steps=4)
LONG = {"num_inference_steps": 40}


def _reference(model: pipeline.LoadedModel, req: c.VideoRequest) -> np.ndarray:
    return pipeline.generate(model, pipeline.GenerationParams.from_request(req, model.spec))


async def _run_until(
    acts: DiffusionActivities,
    req: c.VideoRequest,
    env: ActivityEnvironment,
    reached: int,
    action: str,
) -> tuple[BaseException, list[dict[str, Any]]]:
    """Run one attempt; when its heartbeats show `reached` steps, shut the worker down or
    (a crash, as the server sees it) stop listening. The attempt's error and heartbeats."""
    beats: list[dict[str, Any]] = []
    env.on_heartbeat = lambda *d: beats.append(d[0])
    task = asyncio.ensure_future(env.run(acts.generate_video, c.GenerateInput(req)))
    while not beats or (beats[-1].get("reached_step") or 0) < reached:
        assert not task.done(), "finished before the interruption point"
        await asyncio.sleep(0.01)
    if action == "shutdown":
        env.worker_shutdown()
    else:
        env.cancel()
    with pytest.raises(BaseException) as info:
        await asyncio.wait_for(task, timeout=60)
    return info.value, beats


def _attempt(n: int, details: dict[str, Any] | None) -> ActivityEnvironment:
    env = _env(attempt=n)
    env.info = dataclasses.replace(env.info, heartbeat_details=[details] if details else [])
    return env


async def test_graceful_shutdown_hands_over_without_losing_a_step(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    store = FileStore(tmp_path)
    acts = DiffusionActivities(model, store, policy=STEPS_POLICY)
    req = _request(**LONG)
    err, beats = await _run_until(acts, req, _env(attempt=1), reached=6, action="shutdown")
    assert isinstance(err, ApplicationError) and err.type == c.ErrorCode.WORKER_SHUTDOWN
    assert not err.non_retryable and err.next_retry_delay is not None
    last = beats[-1]
    # The final heartbeat names a checkpoint of exactly the step the loop stopped at.
    assert last["step"] == last["reached_step"] >= 6 and last["attempt"] == 1
    assert store.exists(last["checkpoint_key"]) and last["checkpoint_uri"].endswith(
        last["checkpoint_key"]
    )
    assert last["previous"]["step"] < last["step"]

    out = await _attempt(2, last).run(acts.generate_video, c.GenerateInput(req))
    assert out.resumed_from_step == last["step"] and out.wasted_steps == 0
    _assert_reference(store, out, model, req)


async def _crashed(
    model: pipeline.LoadedModel, store: FileStore
) -> tuple[DiffusionActivities, c.VideoRequest, list[dict[str, Any]]]:
    """Attempt 1 of a 40-step job that stops heartbeating (dies, as the server sees it) after
    10 steps; its activities, request and heartbeats."""
    acts = DiffusionActivities(model, store, policy=STEPS_POLICY)
    req = _request(**LONG)
    _, beats = await _run_until(acts, req, _env(attempt=1), reached=10, action="crash")
    return acts, req, beats


def _assert_reference(
    store: FileStore, out: c.GenerateOutput, model: pipeline.LoadedModel, req: c.VideoRequest
) -> None:
    assert (media.frames_from_bytes(store.get(out.frames_key)) == _reference(model, req)).all()


async def test_a_crash_resumes_from_the_last_heartbeated_checkpoint(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    store = FileStore(tmp_path)
    acts, req, beats = await _crashed(model, store)
    # What the server held when the worker died: some heartbeat with a checkpoint. Checkpoints
    # confirmed after it would be found by listing (and used); drop them to see the heartbeat's.
    held = next(b for b in reversed(beats) if b.get("step"))
    for key in store.list("checkpoints/"):
        if c.parse_checkpoint_key(key)[1] > held["step"]:
            store.delete(key)
    out = await _attempt(2, held).run(acts.generate_video, c.GenerateInput(req))
    assert out.resumed_from_step == held["step"]
    assert out.wasted_steps == held["reached_step"] - held["step"]
    assert 0 <= out.wasted_steps <= STEPS_POLICY.every_steps + 1
    _assert_reference(store, out, model, req)


@pytest.mark.slow
async def test_a_checkpoint_newer_than_the_last_heartbeat_is_used(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    store = FileStore(tmp_path)
    acts, req, beats = await _crashed(model, store)
    stale = next(b for b in beats if b.get("step"))  # an early heartbeat: older checkpoint
    newest = max(c.parse_checkpoint_key(k)[1] for k in store.list("checkpoints/"))
    assert newest > stale["step"]
    out = await _attempt(2, stale).run(acts.generate_video, c.GenerateInput(req))
    assert out.resumed_from_step == newest
    _assert_reference(store, out, model, req)


@pytest.mark.slow
async def test_no_usable_checkpoint_starts_over_and_says_so(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    store = FileStore(tmp_path)
    acts, req, beats = await _crashed(model, store)
    held = next(b for b in reversed(beats) if b.get("step"))
    store.delete_prefix("checkpoints/")
    out = await _attempt(2, held).run(acts.generate_video, c.GenerateInput(req))
    assert out.resumed_from_step == 0 and out.wasted_steps == held["reached_step"]
    _assert_reference(store, out, model, req)


async def test_poisoned_state_is_never_checkpointed_and_restarts_the_worker(
    model: pipeline.LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path)
    restarts: list[bool] = []
    acts = DiffusionActivities(
        model,
        store,
        policy=CheckpointPolicy(mode="steps", every_steps=1),
        on_poisoned=lambda: restarts.append(True),
    )
    req = _request(num_inference_steps=12)
    transformer = model.pipe.transformer
    real_forward = transformer.forward
    calls = {"n": 0}

    def forward(*args: Any, **kwargs: Any) -> Any:
        out = real_forward(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 2 * 5:  # two passes per step: steps 0-4 are fine, step 5 is NaN
            out[0].fill_(float("nan"))
        return out

    monkeypatch.setattr(transformer, "forward", forward)
    beats: list[dict[str, Any]] = []
    env = _env(attempt=1)
    env.on_heartbeat = lambda *d: beats.append(d[0])
    with pytest.raises(ApplicationError) as info:
        await env.run(acts.generate_video, c.GenerateInput(req))
    assert info.value.type == c.ErrorCode.POISONED and not info.value.non_retryable
    assert restarts == [True] and beats[-1]["poisoned"] == 1
    steps = sorted(c.parse_checkpoint_key(k)[1] for k in store.list("checkpoints/"))
    assert steps and max(steps) == 5, steps  # nothing past the last good step

    # The model is fine again (a fresh worker): the retry resumes from the last good step.
    monkeypatch.setattr(transformer, "forward", real_forward)
    out = await _attempt(2, beats[-1]).run(acts.generate_video, c.GenerateInput(req))
    assert out.resumed_from_step == 5
    _assert_reference(store, out, model, req)


async def test_repeated_poisoning_fails_the_job(
    model: pipeline.LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acts = DiffusionActivities(model, FileStore(tmp_path), on_poisoned=lambda: None)
    transformer = model.pipe.transformer
    real_forward = transformer.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        out = real_forward(*args, **kwargs)
        out[0].fill_(float("inf"))
        return out

    monkeypatch.setattr(transformer, "forward", forward)
    prior = {"step": None, "attempt": 2, "reached_step": 0, "poisoned": 2}
    with pytest.raises(ApplicationError) as info:
        await _attempt(3, prior).run(acts.generate_video, c.GenerateInput(_request()))
    assert info.value.non_retryable and info.value.type == c.ErrorCode.POISONED
    assert "3 attempts" in info.value.message


async def test_store_outage_loses_checkpoints_not_the_job(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    class Flaky(FileStore):
        def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
            if key.startswith("checkpoints/"):
                raise StorageError("connection reset")
            super().put(key, data, if_absent=if_absent)

    store = Flaky(tmp_path)
    acts = DiffusionActivities(
        model,
        store,
        policy=CheckpointPolicy(mode="steps", every_steps=2),
        checkpoint_retries=2,
        checkpoint_backoff_s=0.0,
    )
    before = metrics.CHECKPOINT_FAILURES._value.get()
    req = _request(num_inference_steps=6)
    out = await _env().run(acts.generate_video, c.GenerateInput(req))
    assert out.checkpoints_written == 0
    assert metrics.CHECKPOINT_FAILURES._value.get() > before
    _assert_reference(store, out, model, req)


async def test_shutdown_past_the_grace_period_still_hands_over(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    """When the SDK cancels the activity because the worker's graceful period ran out, the
    state is still checkpointed and the attempt fails as a hand-over, not as a user cancel."""
    store = FileStore(tmp_path)
    acts = DiffusionActivities(model, store, policy=STEPS_POLICY)
    req = _request(**LONG)
    env = _env(attempt=1)
    beats: list[dict[str, Any]] = []
    env.on_heartbeat = lambda *d: beats.append(d[0])
    task = asyncio.ensure_future(env.run(acts.generate_video, c.GenerateInput(req)))
    while not beats or (beats[-1].get("reached_step") or 0) < 6:
        await asyncio.sleep(0.01)
    env.cancel(ActivityCancellationDetails(worker_shutdown=True))
    with pytest.raises(ApplicationError) as info:
        await asyncio.wait_for(task, timeout=60)
    assert info.value.type == c.ErrorCode.WORKER_SHUTDOWN
    assert beats[-1]["step"] == beats[-1]["reached_step"] >= 6
    assert beats[-1]["attempt"] == beats[-1]["heartbeat_attempt"] == 1


async def test_an_unreadable_store_at_resume_retries_instead_of_starting_over(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    class Down(FileStore):
        def get(self, key: str) -> bytes:
            raise StorageError("connection refused")

    store = Down(tmp_path)
    _, req, beats = await _crashed(model, FileStore(tmp_path))
    held = next(b for b in reversed(beats) if b.get("step"))
    env = _attempt(2, held)
    seen: list[dict[str, Any]] = []
    env.on_heartbeat = lambda *d: seen.append(d[0])
    down = DiffusionActivities(model, store, policy=STEPS_POLICY)
    with pytest.raises(ApplicationError) as info:
        await env.run(down.generate_video, c.GenerateInput(req))
    assert info.value.type == c.ErrorCode.STORE_UNAVAILABLE and not info.value.non_retryable
    # The heartbeat still names the checkpoint for the next try.
    assert all(b["checkpoint_key"] == held["checkpoint_key"] for b in seen)
