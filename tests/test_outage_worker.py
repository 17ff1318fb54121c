"""The GPU activity through outages, without a stack (temporalio's ActivityEnvironment, the tiny
model, a file store that fails on demand): finished frames survive an unreachable store, a
checkpoint that cannot be written is skipped, and a retry reuses frames an earlier attempt
stored but could not report (docs/checkpoints.md, "What happens on each kind of failure")."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import unit_request
from temporalio.activity import ActivityCancellationDetails
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import checkpoint, media, pipeline
from activities.checkpoint import CheckpointPolicy
from activities.diffusion import DiffusionActivities
from videogen import catalog
from videogen import contracts as c
from videogen.storage import FileStore, StorageError, StoreUnavailable


@pytest.fixture(scope="module")
def model() -> pipeline.LoadedModel:
    return pipeline.load_pipeline(catalog.TINY_SPEC, "cpu")


class Outage(FileStore):
    """A file store that refuses writes of keys under `prefix` while `down` (the error an
    unreachable S3 gives), and counts the refusals."""

    def __init__(self, root: Path, prefix: str, error: type[StorageError] = StoreUnavailable):
        super().__init__(root)
        self.prefix, self.error = prefix, error
        self.down = False
        self.refused = 0

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        if self.down and key.startswith(self.prefix):
            self.refused += 1
            raise self.error(f"cannot write {key!r}: store unreachable")
        super().put(key, data, if_absent=if_absent)


def _request(**overrides: object) -> c.VideoRequest:
    return unit_request(**{"job_id": "video_outage", "num_inference_steps": 8, **overrides})


def _env(
    attempt: int = 1, details: dict[str, Any] | None = None
) -> tuple[ActivityEnvironment, list[dict[str, Any]]]:
    """An attempt's environment and the list its heartbeats go to."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info,
        attempt=attempt,
        heartbeat_timeout=None,
        heartbeat_details=[details] if details else [],
    )
    beats: list[dict[str, Any]] = []
    env.on_heartbeat = lambda *d: beats.append(d[0] if d else {})
    return env, beats


def _reference(model: pipeline.LoadedModel, req: c.VideoRequest) -> np.ndarray:
    return pipeline.generate(model, pipeline.GenerationParams.from_request(req, model.spec))


def _frames(store: FileStore, out: c.GenerateOutput) -> np.ndarray:
    return media.frames_from_bytes(store.get(out.frames_key))


async def _restore_after(store: Outage, seconds: float) -> None:
    await asyncio.sleep(seconds)
    store.down = False


# -- the frames upload ---------------------------------------------------------------------------


@pytest.mark.parametrize("error", [StoreUnavailable, StorageError])
async def test_frames_that_cannot_be_uploaded_are_kept_and_retried(
    model: pipeline.LoadedModel, tmp_path: Path, error: type[StorageError]
) -> None:
    """The store is down when the denoise ends: the attempt keeps its frames, heartbeats and
    retries the upload until the store is back, instead of failing (and recomputing)."""
    store = Outage(tmp_path, "frames/", error)
    store.down = True
    acts = DiffusionActivities(model, store, upload_backoff_s=0.05)
    req = _request()
    env, beats = _env()
    restore = asyncio.ensure_future(_restore_after(store, 2.5))
    out = await env.run(acts.generate_video, c.GenerateInput(req))
    await restore
    assert store.refused >= 3, "the upload was tried during the outage"
    assert out.attempt == 1 and out.resumed_from_step is None and out.wasted_steps == 0
    assert (_frames(store, out) == _reference(model, req)).all()
    assert store.exists(c.frames_manifest_key(req.job_id, 1))
    # It heartbeated while it waited (about every second), so the server kept the attempt.
    assert len([b for b in beats if b.get("phase") == c.Phase.DECODING]) >= 2


async def test_frames_upload_gives_up_after_its_bound(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    store = Outage(tmp_path, "frames/")
    store.down = True
    acts = DiffusionActivities(model, store, upload_retry_s=1.0, upload_backoff_s=0.1)
    env, _ = _env()
    started = time.monotonic()
    with pytest.raises(ApplicationError) as info:
        await env.run(acts.generate_video, c.GenerateInput(_request()))
    assert info.value.type == c.ErrorCode.STORE_UNAVAILABLE and not info.value.non_retryable
    assert time.monotonic() - started < 30
    assert store.list("frames/") == []


async def test_cancel_during_the_upload_retries_stops_them(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    store = Outage(tmp_path, "frames/")
    store.down = True
    acts = DiffusionActivities(model, store, upload_backoff_s=0.2)
    env, _ = _env()
    task = asyncio.ensure_future(env.run(acts.generate_video, c.GenerateInput(_request())))
    while store.refused < 2:
        assert not task.done()
        await asyncio.sleep(0.02)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=30)
    store.down = False
    assert store.list("frames/") == []


# -- checkpoints -------------------------------------------------------------------------------


async def test_a_checkpoint_that_cannot_be_written_is_skipped_and_the_next_one_made(
    model: pipeline.LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store goes down mid-denoise and comes back: the checkpoints due meanwhile are
    skipped (the loop never waits for them), the attempt goes on, and later ones are written."""
    store = Outage(tmp_path, "checkpoints/")
    acts = DiffusionActivities(
        model,
        store,
        policy=CheckpointPolicy(mode="steps", every_steps=1),
        checkpoint_retries=1,
        checkpoint_backoff_s=0.0,
    )
    req = _request(num_inference_steps=16)
    real_step = pipeline.denoise_step

    def step(m: pipeline.LoadedModel, state: pipeline.DenoiseState) -> None:
        # Down for steps 4-9 (as the loop counts them), up again after.
        store.down = 4 <= state.next_step < 10
        real_step(m, state)

    monkeypatch.setattr(pipeline, "denoise_step", step)
    env, beats = _env()
    out = await env.run(acts.generate_video, c.GenerateInput(req))
    assert store.refused > 0
    confirmed = [b["step"] for b in beats if b.get("step")]
    assert confirmed and max(confirmed) > 10, "checkpoints resumed once the store was back"
    assert out.checkpoints_written > 0 and out.wasted_steps == 0
    assert (_frames(store, out) == _reference(model, req)).all()


# -- frames stored by an attempt whose completion was lost ----------------------------------------


async def _completed_attempt(
    model: pipeline.LoadedModel, store: FileStore, req: c.VideoRequest
) -> tuple[c.GenerateOutput, list[dict[str, Any]]]:
    acts = DiffusionActivities(model, store, policy=CheckpointPolicy(mode="steps", every_steps=3))
    env, beats = _env(attempt=1)
    return await env.run(acts.generate_video, c.GenerateInput(req)), beats


async def test_a_retry_reuses_the_frames_a_lost_completion_stored(
    model: pipeline.LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 stored its frames, but its completion never reached Temporal (down): the
    retry finds them, verifies them and reports them, denoising nothing."""
    store = FileStore(tmp_path)
    req = _request(num_inference_steps=10)  # not a multiple of 3: the last checkpoint is older
    first, beats = await _completed_attempt(model, store, req)
    steps: list[int] = []
    real_step = pipeline.denoise_step
    monkeypatch.setattr(
        pipeline, "denoise_step", lambda m, s: (steps.append(s.next_step), real_step(m, s))
    )
    # What the server held: a heartbeat from early on (the later ones never reached it).
    held = next(b for b in beats if b.get("step"))
    acts = DiffusionActivities(model, store)
    env, _ = _env(attempt=2, details=held)
    out = await env.run(acts.generate_video, c.GenerateInput(req))
    assert steps == [], "no step computed again"
    assert out.frames_sha256 == first.frames_sha256 and out.frames_key.endswith("attempt-2.npy")
    assert out.wasted_steps == 0 and out.resumed_from_step == req.num_inference_steps
    assert store.get(out.frames_key) == store.get(first.frames_key)


async def test_stored_frames_are_reused_only_when_verified(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    """Frames that do not match their manifest, or a manifest of other parameters, are not
    used: the retry resumes from the checkpoints and counts the steps it computes again."""
    store = FileStore(tmp_path)
    req = _request(num_inference_steps=10)
    first, beats = await _completed_attempt(model, store, req)
    key = first.frames_key
    frames = media.frames_from_bytes(store.get(key)).copy()
    frames[0, 0, 0, 0] ^= 1
    store.put(key, media.frames_to_bytes(frames))  # damaged after its manifest was written
    params = pipeline.GenerationParams.from_request(req, catalog.TINY_SPEC)
    found, skipped, finished = checkpoint.find_published_frames(
        store, model, params, job_id=req.job_id, before_attempt=2
    )
    assert found is None and "not the manifest's" in skipped[0] and finished
    other = dataclasses.replace(params, seed=4)
    found, skipped, finished = checkpoint.find_published_frames(
        store, model, other, job_id=req.job_id, before_attempt=2
    )
    assert found is None and "other params" in skipped[0] and not finished
    newest = max(c.parse_checkpoint_key(k)[1] for k in store.list("checkpoints/"))

    held = next(b for b in beats if b.get("step"))
    env, _ = _env(attempt=2, details=held)
    out = await env.run(DiffusionActivities(model, store).generate_video, c.GenerateInput(req))
    # Resumed from the newest checkpoint (step 9, or 10 when the writer was busy at 9); the
    # early heartbeat said only step 3, but attempt 1 finished (its manifest says so): the
    # steps from there on are done twice.
    assert out.resumed_from_step == newest
    assert out.wasted_steps == req.num_inference_steps - newest
    assert (_frames(store, out) == _reference(model, req)).all()


async def test_wasted_steps_count_checkpoints_the_server_never_heard_of(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    """Attempt 1 wrote checkpoints after its last heartbeat that reached the server; the newest
    is unreadable, so the retry resumes from an older one: every step between is done twice."""
    store = FileStore(tmp_path)
    req = _request(num_inference_steps=10)
    _, beats = await _completed_attempt(model, store, req)
    store.delete_prefix(c.frames_prefix(req.job_id))  # as if it died before storing frames
    keys = sorted(store.list("checkpoints/"), key=lambda k: c.parse_checkpoint_key(k)[1])
    newest = c.parse_checkpoint_key(keys[-1])[1]
    store.put(keys[-1], b"torn")  # the newest (step 9 or 10) is damaged
    held = next(b for b in beats if b.get("step"))  # step 3, reached 3 or 4
    env, _ = _env(attempt=2, details=held)
    out = await env.run(DiffusionActivities(model, store).generate_video, c.GenerateInput(req))
    resumed = out.resumed_from_step
    assert resumed is not None and resumed < newest
    assert out.wasted_steps == newest - resumed


async def test_an_attempt_that_loses_its_lease_leaves_its_state_to_the_retry(
    model: pipeline.LoadedModel, tmp_path: Path
) -> None:
    """With Temporal unreachable the SDK gives up delivering heartbeats and cancels the attempt
    as timed out: it stops at the next step, checkpoints exactly there, and its retry (whose
    last heartbeat on the server is older) resumes from that step: no step done twice."""
    store = FileStore(tmp_path)
    acts = DiffusionActivities(model, store, policy=CheckpointPolicy(mode="steps", every_steps=5))
    req = _request(num_inference_steps=40)
    env, beats = _env()
    task = asyncio.ensure_future(env.run(acts.generate_video, c.GenerateInput(req)))
    while not beats or (beats[-1].get("reached_step") or 0) < 12:
        assert not task.done()
        await asyncio.sleep(0.01)
    env.cancel(ActivityCancellationDetails(timed_out=True))
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=60)
    stopped = max(c.parse_checkpoint_key(k)[1] for k in store.list("checkpoints/"))
    assert stopped >= beats[-1]["reached_step"] >= 12
    held = next(b for b in beats if b.get("step"))  # what the server last heard: step 5
    env2, _ = _env(attempt=2, details=held)
    out = await env2.run(acts.generate_video, c.GenerateInput(req))
    assert out.resumed_from_step == stopped and out.wasted_steps == 0
    assert (_frames(store, out) == _reference(model, req)).all()
