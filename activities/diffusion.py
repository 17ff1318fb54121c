"""The GPU activity: denoise one video on this worker's warm model and store its frames.

`DiffusionActivities` owns the loaded pipeline (loaded once per process by the GPU worker) and
the object store. The denoising loop is blocking torch work, so it runs in a thread while the
activity's event-loop side heartbeats, sends throttled progress signals to the workflow and
watches for cancellation, which stops the loop at the next step boundary.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import pipeline
from activities.media import frames_to_bytes
from videogen import contracts as c
from videogen.storage import ObjectStore

log = structlog.get_logger(__name__)

# How often the event-loop side looks at the denoising thread. Well under one step of a real
# model, so cancellation and heartbeats are never late by more than this.
POLL_INTERVAL_S = 0.05


class _Stopped(Exception):
    """Raised inside the denoising thread to abandon the run at a step boundary."""


@dataclass
class _Progress:
    phase: str = c.PHASE_STARTING
    step: int = 0
    total: int = 0


class DiffusionActivities:
    def __init__(self, model: pipeline.LoadedModel, store: ObjectStore) -> None:
        self._model = model
        self._store = store
        # The worker runs one activity at a time; the lock makes that a property of the class
        # too, so a misconfigured worker cannot run two jobs on one GPU.
        self._busy = threading.Lock()

    @activity.defn(name=c.ACTIVITY_GENERATE)
    async def generate_video(self, inp: c.GenerateInput) -> c.GenerateOutput:
        req = inp.request
        info = activity.info()
        attempt = info.attempt
        logger = log.bind(job_id=req.job_id, attempt=attempt, model=req.model)

        if req.model != self._model.spec.name:
            raise ApplicationError(
                f"this worker serves model {self._model.spec.name!r}, not {req.model!r}",
                type=c.ERR_MODEL_MISMATCH,
                non_retryable=True,
            )
        params = pipeline.GenerationParams(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            seed=req.seed,
            width=req.width,
            height=req.height,
            num_frames=req.num_frames,
            num_inference_steps=req.num_inference_steps,
            guidance_scale=req.guidance_scale,
        )
        try:
            pipeline.check_params(self._model.spec, params)
        except ValueError as err:
            raise ApplicationError(str(err), type=c.ERR_INVALID_INPUT, non_retryable=True) from err

        progress = _Progress(total=req.num_inference_steps)
        stop = threading.Event()

        def on_step(done: int, total: int) -> None:
            progress.phase = c.PHASE_DENOISING
            progress.step, progress.total = done, total
            if done == total:
                progress.phase = c.PHASE_DECODING
            if stop.is_set():
                raise _Stopped

        def run() -> bytes:
            if not self._busy.acquire(blocking=False):
                raise RuntimeError("a generation is already running on this GPU")
            try:
                progress.phase = c.PHASE_DENOISING
                frames = pipeline.generate(self._model, params, on_step=on_step)
                return frames_to_bytes(frames)
            finally:
                self._busy.release()

        logger.info("generation started", steps=req.num_inference_steps)
        started = time.monotonic()
        signaller = _ProgressSignaller(req, attempt)
        await signaller.send(progress, force=True)
        work = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=POLL_INTERVAL_S)
                activity.heartbeat({"step": progress.step, "phase": progress.phase})
                await signaller.send(progress)
            data = work.result()
        except asyncio.CancelledError:
            # Stop the loop at the next step and wait for it, so the GPU is really free before
            # the cancellation is reported (the workflow waits for that report).
            stop.set()
            await _wait_uninterrupted(work)
            logger.info("generation cancelled", step=progress.step)
            raise
        except pipeline.PoisonedStateError as err:
            logger.error("poisoned state", error=str(err))
            raise ApplicationError(str(err), type="PoisonedState") from err

        key = c.frames_key(req.job_id, attempt)
        await asyncio.to_thread(self._store.put, key, data)
        elapsed = time.monotonic() - started
        logger.info("generation finished", seconds=round(elapsed, 3), frames_key=key)
        return c.GenerateOutput(
            frames_key=key,
            num_frames=req.num_frames,
            width=req.width,
            height=req.height,
            attempt=attempt,
            device=self._model.device,
            generation_seconds=elapsed,
        )


class _ProgressSignaller:
    """Sends progress to the workflow at most every `progress_interval_s`, phase changes at once.

    Every signal is an event in the workflow's history, so the rate is bounded; viewers read the
    state with queries, which cost no history.
    """

    def __init__(self, req: c.VideoRequest, attempt: int) -> None:
        self._req = req
        self._attempt = attempt
        self._last: tuple[str, int] | None = None
        self._last_at = 0.0

    async def send(self, p: _Progress, *, force: bool = False) -> None:
        now = time.monotonic()
        key = (p.phase, p.step)
        if key == self._last:
            return
        phase_changed = self._last is None or self._last[0] != p.phase
        if not (force or phase_changed or now - self._last_at >= self._req.progress_interval_s):
            return
        self._last, self._last_at = key, now
        update = c.ProgressUpdate(
            attempt=self._attempt, phase=p.phase, step=p.step, total_steps=p.total
        )
        try:
            handle = activity.client().get_workflow_handle(activity.info().workflow_id)
            await handle.signal(c.SIGNAL_PROGRESS, update)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # progress is best effort; the job itself must not fail on it
            log.warning("progress signal failed", job_id=self._req.job_id, error=str(err))


async def _wait_uninterrupted(task: asyncio.Future[object]) -> None:
    """Wait for `task` even if this coroutine is cancelled again meanwhile."""
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            continue
        except Exception:
            return
