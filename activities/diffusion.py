"""The GPU activity: denoise one video on this worker's warm model, resumable at any step.

`DiffusionActivities` owns the loaded pipeline (loaded once per process by the GPU worker) and
the object store. The denoising loop is blocking torch work, so it runs in a thread while the
activity's event-loop side heartbeats, sends throttled progress signals to the workflow and
watches for cancellation and worker shutdown.

Checkpoint/resume (docs/checkpoints.md):
- per the `CheckpointPolicy`, the loop snapshots its state between two steps and a background
  thread uploads it; only a confirmed write goes into the heartbeat details
  (`step`, `checkpoint_uri`, `sha256`, `attempt`, plus the previous checkpoint);
- a retried attempt reads the last attempt's heartbeat details and resumes from the newest
  usable checkpoint (verified, compatible), else from step 0, and says which in its progress;
- worker shutdown (SIGTERM, spot notice) stops at the next step boundary, writes a checkpoint
  synchronously, heartbeats it and fails the attempt with a retryable `WorkerShutdown`, so the
  retry starts at once elsewhere and loses no step;
- a job its tier lets yield (`max_yields`) reads its memo every `YIELD_POLL_S`: a yield request
  accepted for this attempt (activities/preemption.py) ends it the same way, as `Yielded`,
  after telling the workflow (phase `yielded`); the retry queues again at the job's priority;
- NaN/Inf (`PoisonedStateError`) is never checkpointed: the attempt fails retryably and the
  worker is told to exit (`on_poisoned`) so it restarts with a freshly loaded model.

Outages (docs/checkpoints.md, "What happens on each kind of failure"):
- the frames go to the store with a manifest (job, parameters, weights, sha256); a retry whose
  predecessor stored them but could not report it (Temporal unreachable) verifies and reuses
  them instead of denoising again;
- an unreachable object store fails no attempt: checkpoints that cannot be written are
  skipped, and finished frames are kept in memory and their upload retried with backoff,
  heartbeating, for up to `upload_retry_s`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import structlog
import torch
from temporalio import activity
from temporalio.api.enums.v1 import TimeoutType
from temporalio.client import (
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError

from activities import checkpoint, pipeline
from activities.checkpoint import CheckpointPolicy, CheckpointRef, CheckpointWriter
from activities.media import frames_sha256, frames_to_bytes
from videogen import contracts as c
from videogen import metrics
from videogen.storage import ObjectStore, StorageError

log = structlog.get_logger(__name__)
T = TypeVar("T")

# How often the event-loop side looks at the denoising thread. Well under one step of a real
# model, so cancellation, shutdown and heartbeats are never late by more than this.
POLL_INTERVAL_S = 0.05
# A job whose steps keep producing NaN/Inf on this many attempts fails instead of retrying.
MAX_POISONED_ATTEMPTS = 3
# Delay before the retry of a gracefully preempted attempt: it has a fresh checkpoint and
# another worker may be idle, so there is no reason for the retry policy's backoff.
PREEMPTED_RETRY_DELAY = timedelta(milliseconds=100)
# Finished frames that cannot be stored (object store unreachable) are kept in memory and their
# upload retried with exponential backoff for this long, heartbeating, before the attempt
# fails: recomputing them costs the whole denoise, waiting costs a held GPU.
UPLOAD_RETRY_S = 15 * 60.0
UPLOAD_BACKOFF_S = 0.5
UPLOAD_MAX_BACKOFF_S = 10.0
# How long the activity waits for Temporal to describe its own workflow (unreachable: unknown).
DESCRIBE_TIMEOUT_S = 3.0
# How often the activity heartbeats while it waits on the store outside the denoising loop.
WAIT_HEARTBEAT_S = 1.0
# How often a job that may be made to yield reads its memo for a request (one describe call):
# a request waits at most this long plus one step.
YIELD_POLL_S = 1.0


class _Stopped(Exception):
    """Raised inside the denoising thread to abandon the run at a step boundary."""


@dataclass
class _Progress:
    phase: c.Phase = c.Phase.STARTING
    step: int = 0
    total: int = 0
    resumed_from: int | None = None
    wasted: int = 0


@dataclass
class _Prior:
    """What the last attempt that heartbeated left in its details."""

    raw: dict[str, Any] | None
    newest: CheckpointRef | None
    previous: CheckpointRef | None
    reached_step: int
    wasted_steps: int
    poisoned: int

    @classmethod
    def parse(cls, details: Sequence[Any], inp: c.GenerateInput | None = None) -> _Prior:
        """From the last attempt's heartbeat details; the first attempt of a job offered again
        after a cold start has none, and takes what the workflow saw it reach."""
        raw = details[0] if details and isinstance(details[0], dict) else None
        d = raw or {}
        if raw is None and inp is not None and inp.attempt_base:
            d = {"reached_step": inp.prior_reached_step, "wasted_steps": inp.prior_wasted_steps}

        def as_int(v: object) -> int:
            return v if isinstance(v, int) and v >= 0 else 0

        return cls(
            raw=raw,
            newest=CheckpointRef.from_dict(d),
            previous=CheckpointRef.from_dict(d.get("previous")),
            reached_step=as_int(d.get("reached_step")),
            wasted_steps=as_int(d.get("wasted_steps")),
            poisoned=as_int(d.get("poisoned")),
        )


class DiffusionActivities:
    def __init__(
        self,
        model: pipeline.LoadedModel,
        store: ObjectStore,
        *,
        policy: CheckpointPolicy | None = None,
        checkpoint_retries: int = 3,
        checkpoint_backoff_s: float = 0.5,
        on_poisoned: Callable[[], None] | None = None,
        region: str = "",
        upload_retry_s: float = UPLOAD_RETRY_S,
        upload_backoff_s: float = UPLOAD_BACKOFF_S,
    ) -> None:
        self._model = model
        self._store = store
        self._policy = policy or CheckpointPolicy()
        self._retries = checkpoint_retries
        self._backoff_s = checkpoint_backoff_s
        self._on_poisoned = on_poisoned
        self._region = region
        self._upload_retry_s = upload_retry_s
        self._upload_backoff_s = upload_backoff_s
        # When this worker could take jobs (set by the worker once it polls): a job scheduled
        # before that waited for a cold start.
        self.ready_at: datetime | None = None
        # The worker runs one activity at a time; the lock makes that a property of the class
        # too, so a misconfigured worker cannot run two jobs on one GPU.
        self._busy = threading.Lock()
        # Generate activities in flight, and whether new ones may start: a worker switching
        # models (worker_gpu.models) hands a job offered meanwhile back to its queue.
        self.running = 0
        self.accepting = True

    def hold(self, model: pipeline.LoadedModel) -> None:
        """Serve `model` from now on (after a switch): jobs scheduled before now waited for it."""
        self._model = model
        self.ready_at = datetime.now(UTC)

    @activity.defn(name=c.ACTIVITY_GENERATE)
    async def generate_video(self, inp: c.GenerateInput) -> c.GenerateOutput:
        """Admit, start (or resume), denoise while heartbeating, publish the frames."""
        if not self.accepting:
            raise ApplicationError(
                "this GPU worker is switching models; the job goes back to its queue",
                type=c.ErrorCode.WORKER_BUSY,
            )
        self.running += 1
        try:
            return await self._generate(inp)
        finally:
            self.running -= 1

    async def _generate(self, inp: c.GenerateInput) -> c.GenerateOutput:
        req, info = inp.request, activity.info()
        attempt = inp.attempt_base + info.attempt
        logger = log.bind(job_id=req.job_id, attempt=attempt, model=req.model)
        params = self._admit(req)
        prior = _Prior.parse(info.heartbeat_details, inp)
        run = self._new_run(req, attempt, prior)
        warm = await self._record_start(inp, run, logger)
        started = time.monotonic()
        work = asyncio.ensure_future(asyncio.to_thread(self._work, run, params, logger))
        try:
            result = await self._supervise(req, params, run, work, logger)
            key, digest = await self._publish(req, params, run, result, logger)
        finally:
            # Whatever ended the attempt, the GPU and the writer are idle before it is reported.
            if not work.done():
                run.cancel.set()
                await _wait_uninterrupted(work)
            await _heartbeating(asyncio.to_thread(run.writer.drain), run)
            run.writer.close()
            # One line per attempt, however it ended: a job's steps computed twice are the sum
            # of these over its attempts minus its steps.
            logger.info("attempt ended", steps_computed=run.computed, reused_frames=run.reused_from)
        elapsed = time.monotonic() - started
        metrics.GENERATION_SECONDS.labels(
            req.model, c.model_ref(req.model, req.model_version), f"{req.width}x{req.height}"
        ).observe(elapsed)
        logger.info(
            "generation finished",
            seconds=round(elapsed, 3),
            frames_key=key,
            frames_sha256=digest,
            resumed_from_step=run.progress.resumed_from,
            wasted_steps=run.progress.wasted,
            steps_computed=run.computed,
            reused_frames=run.reused_from,
            checkpoints=run.writer.stats.written,
            checkpoint_failures=run.writer.stats.failed,
        )
        return c.GenerateOutput(
            frames_key=key,
            frames_sha256=digest,
            num_frames=req.num_frames,
            width=req.width,
            height=req.height,
            attempt=run.attempt,
            device=self._model.device,
            generation_seconds=elapsed,
            resumed_from_step=run.progress.resumed_from,
            wasted_steps=run.progress.wasted,
            checkpoints_written=run.writer.stats.written,
            warm=warm,
            model_load_seconds=self._model.load_seconds,
        )

    # -- the phases of an attempt, on the event loop --------------------------------------------

    def _admit(self, req: c.VideoRequest) -> pipeline.GenerationParams:
        """The request's parameters, or a non-retryable error: another model, invalid input."""
        if req.model != self._model.spec.name:
            raise ApplicationError(
                f"this worker serves model {self._model.spec.name!r}, not {req.model!r}",
                type=c.ErrorCode.MODEL_MISMATCH,
                non_retryable=True,
            )
        version = self._model.version
        if req.model_version and req.model_version != version:
            raise ApplicationError(
                f"this worker holds {req.model!r} at version {version[:12]}, the job asks for "
                f"{req.model_version[:12]}: only workers of that version poll its warm queue",
                type=c.ErrorCode.MODEL_MISMATCH,
                non_retryable=True,
            )
        spec = self._model.spec
        params = pipeline.GenerationParams.from_request(req, spec)
        try:
            if spec.render_size is not None:
                # The model draws at one size whatever is asked: the asked one must be one it
                # offers (the API checks this too; a request may come from elsewhere).
                spec.check_size(f"{req.width}x{req.height}", "width, height")
            pipeline.check_params(spec, params, self._model.size_multiple)
        except ValueError as err:
            raise ApplicationError(
                str(err), type=c.ErrorCode.INVALID_INPUT, non_retryable=True
            ) from err
        return params

    def _new_run(self, req: c.VideoRequest, attempt: int, prior: _Prior) -> _Run:
        return _Run(
            job_id=req.job_id,
            attempt=attempt,
            prior=prior,
            region=self._region,
            progress=_Progress(
                total=req.num_inference_steps, step=prior.newest.step if prior.newest else 0
            ),
            writer=CheckpointWriter(
                self._store,
                self._model,
                job_id=req.job_id,
                attempt=attempt,
                retries=self._retries,
                backoff_s=self._backoff_s,
                initial=[r for r in (prior.previous, prior.newest) if r is not None],
            ),
        )

    async def _record_start(
        self, inp: c.GenerateInput, run: _Run, logger: structlog.typing.FilteringBoundLogger
    ) -> bool:
        """Metrics and log line of the attempt's start; whether the model was warm for it."""
        req, info = inp.request, activity.info()
        warm = self.ready_at is None or self.ready_at <= info.current_attempt_scheduled_time
        metrics.JOBS_STARTED.labels(warm=str(warm).lower()).inc()
        if run.attempt == 1 and inp.submitted_at:
            metrics.QUEUE_WAIT_SECONDS.labels(req.tier).observe(
                max(0.0, info.started_time.timestamp() - inp.submitted_at)
            )
        elif run.attempt > 1:
            run.interrupted_at = await _last_interruption(run.prior, logger)
        newest = run.prior.newest
        logger.info(
            "generation started",
            steps=req.num_inference_steps,
            warm=warm,
            checkpoint_policy=self._policy.describe(),
            resume_candidate=newest.step if newest else None,
        )
        return warm

    async def _supervise(
        self,
        req: c.VideoRequest,
        params: pipeline.GenerationParams,
        run: _Run,
        work: asyncio.Future[tuple[bytes, str] | None],
        logger: structlog.typing.FilteringBoundLogger,
    ) -> tuple[bytes, str]:
        """Heartbeat and signal progress until the denoising thread ends; turn shutdown,
        cancellation and poisoning into their endings. Returns the frames (bytes, sha256)."""
        signaller = _ProgressSignaller(req, run.attempt)
        await signaller.send(run.progress, force=True)
        watch = _YieldWatch(req, run.attempt)
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=POLL_INTERVAL_S)
                if activity.is_worker_shutdown() and not run.preempt.is_set():
                    logger.info(
                        "worker shutting down: checkpointing at the next step boundary",
                        step=run.progress.step,
                    )
                    run.preempt.set()
                if watch.requested() and not run.preempt.is_set():
                    logger.info(
                        "asked to yield: checkpointing at the next step boundary",
                        step=run.progress.step,
                    )
                    run.yielding = True
                    run.preempt.set()
                activity.heartbeat(run.details())
                await signaller.send(run.progress)
            result = work.result()
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            if details is None or details.cancel_requested or not details.worker_shutdown:
                await self._cancelled(req, params, run, work, details, logger)
                raise
            # The worker's graceful period ran out (the SDK cancels on shutdown): still
            # hand the job over with a checkpoint rather than drop the state.
            run.preempt.set()
            await _wait_uninterrupted(work)
            result = work.result()
        except pipeline.PoisonedStateError as err:
            raise await self._poisoned(run, err, logger) from err
        finally:
            watch.close()
        # Heartbeating: with the store unreachable, the upload in flight may take its retries.
        await _heartbeating(asyncio.to_thread(run.writer.drain), run)
        if result is None:  # stopped for a preemption: hand the attempt over
            await self._preempted(run, signaller, logger)
        return result

    async def _publish(
        self,
        req: c.VideoRequest,
        params: pipeline.GenerationParams,
        run: _Run,
        result: tuple[bytes, str],
        logger: structlog.typing.FilteringBoundLogger,
    ) -> tuple[str, str]:
        """Store the frames under this attempt's key, then their manifest, and report them
        unless a retry superseded this attempt. An unreachable store is waited out
        (`_put_retrying`)."""
        key = c.frames_key(req.job_id, run.attempt)
        manifest_key = c.frames_manifest_key(req.job_id, run.attempt)
        data, digest = result
        manifest = self._frames_manifest(req, params, run, key, digest)
        # Stored first, under this attempt's own keys (harmless if it turns out stale), so that
        # a retry finds them if this completion never reaches Temporal. The manifest last: one
        # that exists names frames that are all there.
        for k, blob in ((key, data), (manifest_key, manifest)):
            await self._put_retrying(k, blob, run, logger)
        if activity.is_cancelled():
            if not _lease_lost():  # the job is cancelled: its cleanup waits for this report
                for written in (manifest_key, key):
                    await asyncio.to_thread(self._store.delete, written)
            raise asyncio.CancelledError
        # A stale attempt (timed out and retried elsewhere, then back to life) must not
        # report: Temporal would reject its completion anyway.
        if not await _is_current_attempt():
            await self._discard_stale(run, logger, also=(manifest_key, key))
            raise ApplicationError(
                "this attempt was superseded by a retry; result discarded", type="StaleAttempt"
            )
        return key, digest

    async def _put_retrying(
        self, key: str, data: bytes, run: _Run, logger: structlog.typing.FilteringBoundLogger
    ) -> None:
        """Put `data` (kept in memory meanwhile) under `key`; while the store fails, retry with
        exponential backoff, heartbeating, for up to `upload_retry_s`, then fail retryably (the
        retry resumes from the last confirmed checkpoint). Every failure counts as transient:
        during an outage a plain `StorageError` may stand for an unreachable store too."""
        deadline = time.monotonic() + self._upload_retry_s
        delay, tries = self._upload_backoff_s, 0
        while True:
            tries += 1
            try:
                # Uninterruptible, so that a cancel arriving now cannot report the attempt over
                # while the write goes on (the workflow's cleanup would run before it lands).
                await _heartbeating(asyncio.to_thread(self._store.put, key, data), run)
            except StorageError as err:
                error = f"{type(err).__name__}: {err}"
                if time.monotonic() + delay > deadline:
                    logger.error(
                        "frames upload failed; giving up", key=key, tries=tries, error=error
                    )
                    raise ApplicationError(
                        f"cannot store the frames after {tries} tries: {error}",
                        type=c.ErrorCode.STORE_UNAVAILABLE,
                    ) from err
                logger.warning(
                    "frames upload failed; keeping them in memory and retrying",
                    key=key,
                    tries=tries,
                    retry_in_s=delay,
                    error=error,
                )
            else:
                if tries > 1:
                    logger.info("frames uploaded after the store came back", key=key, tries=tries)
                return
            # A cancelled job stops here; an attempt that lost its lease (Temporal unreachable)
            # goes on: its retry can reuse these frames once they are stored.
            if activity.is_cancelled() and not _lease_lost():
                raise asyncio.CancelledError
            try:
                await _sleep_heartbeating(delay, run)
            except asyncio.CancelledError:
                if not _lease_lost():
                    raise
            delay = min(delay * 2, UPLOAD_MAX_BACKOFF_S)

    # -- the denoising thread -------------------------------------------------------------------

    def _work(
        self,
        run: _Run,
        params: pipeline.GenerationParams,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> tuple[bytes, str] | None:
        """Resume or start, denoise with checkpoints, decode: the frames as stored (`.npy`)
        and their `frames_sha256`. None: stopped for preemption."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("a generation is already running on this GPU")
        metrics.BUSY.begin()
        try:
            reused = self._reuse_frames(run, params, logger)
            if reused is not None:
                return reused
            state = self._start(run, params, logger)
            model, policy, writer, p = self._model, self._policy, run.writer, run.progress
            last_step, last_at = state.next_step, time.monotonic()
            while not state.done:
                if run.cancel.is_set():
                    raise _Stopped
                if run.preempt.is_set():
                    run.state = state
                    return None
                # 1. One denoising step (raises PoisonedStateError on NaN/Inf, state intact).
                step_started = time.monotonic()
                pipeline.denoise_step(model, state)
                run.computed += 1
                p.phase, p.step = c.Phase.DENOISING, state.next_step
                if run.first_step_s is None:
                    run.first_step_s = time.monotonic() - step_started
                    self._recovered(run, logger)
                # 2. Checkpoint when due and no upload is in flight: a snapshot here (a copy),
                #    serialisation and upload on the writer's thread.
                now = time.monotonic()
                if not writer.busy and policy.due(
                    steps_since=state.next_step - last_step,
                    seconds_since=now - last_at,
                    cost_s=writer.stats.cost_s,
                ):
                    writer.submit(
                        checkpoint.snapshot(
                            state, job_id=run.job_id, attempt=run.attempt, device=model.device
                        )
                    )
                    last_step, last_at = state.next_step, now
            run.state = state
            # 3. Decode.
            p.phase = c.Phase.DECODING
            frames = pipeline.decode(model, state)
            return frames_to_bytes(frames), frames_sha256(frames)
        finally:
            metrics.BUSY.end()
            self._busy.release()

    def _recovered(self, run: _Run, logger: structlog.typing.FilteringBoundLogger) -> None:
        """After the first step of a retried attempt: what the interruption cost."""
        wasted = run.progress.wasted - run.prior.wasted_steps  # lost by the last attempt
        if wasted and run.first_step_s is not None:
            metrics.WASTED_GPU_SECONDS.inc(wasted * run.first_step_s)
        if run.interrupted_at is not None:
            recovery = max(0.0, time.time() - run.interrupted_at)
            metrics.PREEMPTION_RECOVERY_SECONDS.observe(recovery)
            logger.info(
                "recovered: first step after the interruption",
                recovery_seconds=round(recovery, 3),
                wasted_steps=wasted,
            )

    def _reuse_frames(
        self,
        run: _Run,
        params: pipeline.GenerationParams,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> tuple[bytes, str] | None:
        """A retry: the frames an earlier attempt stored (its completion lost, e.g. while
        Temporal was unreachable), verified, so the work is not done again; else None."""
        if run.attempt <= 1:
            return None
        run.progress.phase = c.Phase.RESUMING
        try:
            found, skipped, finished = checkpoint.find_published_frames(
                self._store, self._model, params, job_id=run.job_id, before_attempt=run.attempt
            )
        except Exception as err:
            raise _store_unavailable("looking for stored frames", err) from err
        for reason in skipped:
            logger.warning("stored frames not usable", reason=reason)
        if found is None:
            # An earlier attempt denoised every step, though its frames are unusable: the
            # steps this one computes again are wasted.
            run.prior_finished = finished
            return None
        p = run.progress
        # Nothing is computed again; what earlier attempts lost stays counted.
        p.wasted = max(run.prior.wasted_steps, found.wasted_steps)
        p.step = p.resumed_from = p.total
        p.phase = c.Phase.DECODING
        run.started, run.reused_from = True, found.attempt
        metrics.RESUMES.labels("frames").inc()
        logger.info(
            "reusing the frames an earlier attempt stored",
            frames_key=found.key,
            from_attempt=found.attempt,
            frames_sha256=found.sha256,
            wasted_steps=p.wasted,
        )
        return found.data, found.sha256

    def _start(
        self,
        run: _Run,
        params: pipeline.GenerationParams,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> pipeline.DenoiseState:
        """The state to denoise from: the newest usable checkpoint, else step 0."""
        prior, p = run.prior, run.progress
        found, skipped = None, list[str]()
        # How far earlier attempts got: their last heartbeat, or a checkpoint they wrote after
        # it (heartbeats do not reach an unreachable server; the store keeps the checkpoints).
        reached = run.progress.total if run.prior_finished else prior.reached_step
        if prior.raw is not None or run.attempt > 1:
            p.phase = c.Phase.RESUMING
            try:
                found, skipped = checkpoint.find_resume_point(
                    self._store,
                    self._model,
                    params,
                    job_id=run.job_id,
                    num_threads=torch.get_num_threads(),
                    newest=prior.newest,
                    previous=prior.previous,
                )
                reached = max(reached, checkpoint.newest_listed_step(self._store, run.job_id))
            except Exception as err:
                # Retry later (the heartbeat still names the checkpoints) rather than start over.
                raise _store_unavailable("resuming", err) from err
        for reason in skipped:
            logger.warning("checkpoint not usable", reason=reason)
        if found is not None:
            state = found.state
            wasted = max(0, reached - state.next_step)
            logger.info(
                "resuming",
                from_step=state.next_step,
                source=found.source,
                checkpoint=found.ref.key,
                wasted_steps=wasted,
            )
            for w in found.warnings:
                logger.warning("resume may not be bit-identical", reason=w)
            run.writer.reset([found.ref])
            metrics.RESUMES.labels(found.source).inc()
        else:
            if run.attempt > 1:
                logger.warning("no usable checkpoint: starting from step 0", tried=len(skipped))
                metrics.RESUMES.labels("scratch").inc()
            state = pipeline.prepare(self._model, params)
            wasted = reached
            run.writer.reset([])
        metrics.WASTED_STEPS.inc(wasted)
        p.wasted = prior.wasted_steps + wasted
        p.resumed_from = state.next_step if (found or run.attempt > 1) else None
        p.step = state.next_step
        p.phase = c.Phase.DENOISING
        run.started = True
        return state

    # -- endings -------------------------------------------------------------------------------

    async def _cancelled(
        self,
        req: c.VideoRequest,
        params: pipeline.GenerationParams,
        run: _Run,
        work: asyncio.Future[tuple[bytes, str] | None],
        details: activity.ActivityCancellationDetails | None,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        """Stop the loop at the next step and wait for it and for an upload in flight, so the
        GPU is really free and nothing is written after the workflow cleans up (it waits for
        this report). An attempt that lost its lease leaves its work to the retry."""
        lease_lost = _lease_lost(details)
        # Lease lost: Temporal timed the attempt out, or the SDK gave up telling it that the
        # attempt lives (Temporal unreachable). Its retry resumes from what it leaves, so stop
        # as for a hand-over, keeping the state; a cancelled job just stops.
        (run.preempt if lease_lost else run.cancel).set()
        await _wait_uninterrupted(work)
        await _uninterruptible(asyncio.to_thread(run.writer.drain))
        if lease_lost:
            await self._keep_for_retry(req, params, run, work, logger)
        if details is not None and (details.not_found or details.timed_out):
            await self._discard_stale(run, logger)
        logger.info("generation cancelled", step=run.progress.step, lease_lost=lease_lost)

    async def _checkpoint_stopped(self, run: _Run) -> CheckpointRef | None:
        """Checkpoint the state the loop stopped at, synchronously (unless the newest confirmed
        checkpoint is of that very step); the newest confirmed checkpoint after it."""
        state = run.state
        assert state is not None
        newest = run.writer.newest
        if newest is None or newest.step != state.next_step:
            snap = checkpoint.snapshot(
                state, job_id=run.job_id, attempt=run.attempt, device=self._model.device
            )
            await _uninterruptible(asyncio.to_thread(run.writer.write, snap))
        return run.writer.newest

    async def _preempted(
        self,
        run: _Run,
        signaller: _ProgressSignaller,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> NoReturn:
        """Checkpoint the stopped state synchronously, heartbeat it, fail retryably."""
        state = run.state
        assert state is not None
        newest = await self._checkpoint_stopped(run)
        # The failure below flushes these details to the server before it is reported.
        activity.heartbeat(run.details())
        at = newest.step if newest else 0
        lost = state.next_step - at
        logger.info(
            "preempted: attempt handed over",
            step=state.next_step,
            checkpoint_step=at,
            lost_steps=lost,
            yielded=run.yielding,
        )
        if run.yielding:
            # Told before the attempt fails: a late report would come after the retry's first
            # one and be dropped as stale, and the yield would go uncounted.
            run.progress.phase, run.progress.step = c.Phase.YIELDED, at
            await signaller.send_now(run.progress)
            raise ApplicationError(
                f"yielded its GPU to a higher-priority job at step {state.next_step}; the retry "
                f"resumes from step {at}",
                type=c.ErrorCode.YIELDED,
                next_retry_delay=PREEMPTED_RETRY_DELAY,
            )
        raise ApplicationError(
            f"worker shut down at step {state.next_step}; the retry resumes from step {at}",
            type=c.ErrorCode.WORKER_SHUTDOWN,
            next_retry_delay=PREEMPTED_RETRY_DELAY,
        )

    async def _poisoned(
        self,
        run: _Run,
        err: pipeline.PoisonedStateError,
        logger: structlog.typing.FilteringBoundLogger,
    ) -> ApplicationError:
        """NaN/Inf: never checkpointed; fail this attempt and have the worker restart."""
        await _uninterruptible(asyncio.to_thread(run.writer.drain))
        run.poisoned = run.prior.poisoned + 1
        activity.heartbeat(run.details())
        final = run.poisoned >= MAX_POISONED_ATTEMPTS
        logger.error(
            "poisoned state: worker will restart",
            error=str(err),
            poisoned_attempts=run.poisoned,
            giving_up=final,
        )
        if self._on_poisoned is not None:
            self._on_poisoned()
        if final:
            return ApplicationError(
                f"{err} on {run.poisoned} attempts; the model cannot generate this request "
                "(try another seed or prompt)",
                type=c.ErrorCode.POISONED,
                non_retryable=True,
            )
        return ApplicationError(
            f"{err}; retrying from the last checkpoint on a fresh worker", type=c.ErrorCode.POISONED
        )

    async def _keep_for_retry(
        self,
        req: c.VideoRequest,
        params: pipeline.GenerationParams,
        run: _Run,
        work: asyncio.Future[tuple[bytes, str] | None],
        logger: structlog.typing.FilteringBoundLogger,
    ) -> None:
        """An attempt that lost its lease (Temporal unreachable, say): leave its work where the
        retry finds it, under this attempt's own keys. Stopped at a step boundary: a checkpoint
        of exactly that step. Frames finished: the frames and their manifest. One try each;
        best effort (the store may be down too)."""
        if work.cancelled() or work.exception() is not None or await _workflow_closed():
            return
        result = work.result()
        if result is None:
            ref = await self._checkpoint_stopped(run)
            logger.info("lease lost: state checkpointed for the retry", step=ref and ref.step)
            return
        data, digest = result
        key = c.frames_key(req.job_id, run.attempt)
        manifest = self._frames_manifest(req, params, run, key, digest)
        try:
            for k, blob in (
                (key, data),
                (c.frames_manifest_key(req.job_id, run.attempt), manifest),
            ):
                await _uninterruptible(asyncio.to_thread(self._store.put, k, blob))
        except StorageError as err:
            logger.warning("stale attempt could not store its frames", error=str(err))
            return
        logger.info("stale attempt stored its frames for the retry", frames_key=key)

    def _frames_manifest(
        self,
        req: c.VideoRequest,
        params: pipeline.GenerationParams,
        run: _Run,
        key: str,
        digest: str,
    ) -> bytes:
        return checkpoint.frames_manifest(
            self._model,
            params,
            job_id=req.job_id,
            attempt=run.attempt,
            frames_key=key,
            frames_sha256=digest,
            wasted_steps=run.progress.wasted,
        )

    async def _discard_stale(
        self,
        run: _Run,
        logger: structlog.typing.FilteringBoundLogger,
        also: Sequence[str] = (),
    ) -> None:
        """A superseded attempt: once the job is over, delete the checkpoints it wrote (and
        the keys `also`)."""
        written = [r.key for r in run.writer.stats.history] + list(also)
        closed = await _workflow_closed()
        if closed and written:
            for key in written:
                await asyncio.to_thread(self._store.delete, key)
        logger.warning(
            "stale attempt discarded",
            job_closed=closed,
            checkpoints_deleted=len(written) if closed else 0,
        )


@dataclass
class _Run:
    """What the denoising thread and the event-loop side of one attempt share."""

    job_id: str
    attempt: int
    prior: _Prior
    progress: _Progress
    writer: CheckpointWriter
    state: pipeline.DenoiseState | None = None
    started: bool = False
    poisoned: int = 0
    # Where this worker runs (heartbeated: the retry counts a preemption under it).
    region: str = ""
    # A retry: when the interrupted attempt last heartbeated (Unix time), and this attempt's
    # first step time (to price the steps it lost in GPU seconds).
    interrupted_at: float | None = None
    first_step_s: float | None = None
    # Steps this attempt denoised; the earlier attempt whose stored frames it reused, if any.
    computed: int = 0
    reused_from: int | None = None
    # An earlier attempt stored frames for every step, but they were unusable.
    prior_finished: bool = False
    # Stopped to hand the GPU to a higher-priority job (not for a worker shutdown).
    yielding: bool = False

    def __post_init__(self) -> None:
        self.cancel = threading.Event()
        self.preempt = threading.Event()
        self.poisoned = self.prior.poisoned

    def details(self) -> dict[str, Any]:
        """Heartbeat details: the confirmed checkpoints and how far this attempt got."""
        if not self.started and self.prior.raw is not None:
            # Still restoring: keep the last attempt's details as they were, so a crash now
            # leaves the next attempt exactly what this one had.
            return {**self.prior.raw, "poisoned": self.poisoned}
        newest, previous = self.writer.newest, self.writer.previous
        d: dict[str, Any] = newest.to_dict() if newest else {"step": None}
        d.update(
            # `attempt` (above) is the checkpoint's writer; this one is the attempt heartbeating.
            heartbeat_attempt=self.attempt,
            previous=previous.to_dict() if previous else None,
            reached_step=self.progress.step,
            phase=self.progress.phase,
            wasted_steps=self.progress.wasted,
            poisoned=self.poisoned,
            # Where this attempt ran: the retry counts its preemption under this region.
            region=self.region,
        )
        return d


async def _own_workflow() -> WorkflowExecutionDescription | None:
    """This activity's workflow as the server sees it; None if that cannot be told (no client
    in unit tests, server busy)."""
    info = activity.info()
    assert info.workflow_id is not None  # always, for an activity a workflow scheduled
    try:
        handle = activity.client().get_workflow_handle(
            info.workflow_id, run_id=info.workflow_run_id
        )
        # Bounded: with Temporal unreachable the client would retry for many seconds, and the
        # attempt's publishing or hand-over must not wait on it.
        return await asyncio.wait_for(handle.describe(), DESCRIBE_TIMEOUT_S)
    except asyncio.CancelledError:
        raise
    except Exception:
        return None


async def _last_interruption(
    prior: _Prior, logger: structlog.typing.FilteringBoundLogger
) -> float | None:
    """For a retried attempt: when the previous one last heartbeated (Unix time), and how it
    ended, counted here: a preempted worker exits within a second of its hand-over, before any
    scrape could see its own counters. None if the server cannot tell."""
    desc = await _own_workflow()
    if desc is None:
        return None
    info = activity.info()
    for pending in desc.raw_description.pending_activities:
        if pending.activity_id != info.activity_id:
            continue
        failure = pending.last_failure
        region = str((prior.raw or {}).get("region") or "")
        if (
            failure.HasField("timeout_failure_info")
            and failure.timeout_failure_info.timeout_type == TimeoutType.TIMEOUT_TYPE_HEARTBEAT
        ):
            metrics.LEASE_EXPIRATIONS.inc()
            logger.warning("previous attempt's lease expired (heartbeat timeout): resuming")
        elif failure.HasField("application_failure_info"):
            kinds: dict[str, str] = {
                c.ErrorCode.WORKER_SHUTDOWN: "graceful",
                c.ErrorCode.POISONED: "poisoned",
                c.ErrorCode.YIELDED: "yielded",
            }
            kind = kinds.get(failure.application_failure_info.type)
            if kind:
                metrics.PREEMPTIONS.labels(kind, region).inc()
        if pending.HasField("last_heartbeat_time"):
            return pending.last_heartbeat_time.ToDatetime(UTC).timestamp()
        return None
    return None


async def _is_current_attempt() -> bool:
    """Whether the server still runs this very attempt (not a retry of it, not a closed job);
    if that cannot be told, Temporal judges the completion."""
    desc = await _own_workflow()
    if desc is None:
        return True
    if desc.status != WorkflowExecutionStatus.RUNNING:
        return False
    info = activity.info()
    for pending in desc.raw_description.pending_activities:
        if pending.activity_id == info.activity_id:
            return pending.attempt == info.attempt
    return False


async def _workflow_closed() -> bool:
    desc = await _own_workflow()
    return desc is not None and desc.status != WorkflowExecutionStatus.RUNNING


class _YieldWatch:
    """Whether a yield request was accepted for this attempt: the job's memo, read every
    `YIELD_POLL_S` in a task of its own (the supervising loop never waits on Temporal). Off
    for a job its tier never lets yield."""

    def __init__(self, req: c.VideoRequest, attempt: int) -> None:
        self._on = req.max_yields > 0
        self._attempt = attempt
        self._reading: asyncio.Task[int] | None = None
        self._next_at = 0.0

    def requested(self) -> bool:
        if not self._on:
            return False
        reading, now = self._reading, time.monotonic()
        if reading is not None and reading.done():
            self._reading = None
            if (
                not reading.cancelled()
                and reading.exception() is None
                and (reading.result() == self._attempt)
            ):
                return True
        if self._reading is None and now >= self._next_at:
            self._next_at = now + YIELD_POLL_S
            self._reading = asyncio.create_task(_yield_attempt())
        return False

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()


async def _yield_attempt() -> int:
    """The attempt asked to yield, from the workflow's memo (0: none, or unknown)."""
    desc = await _own_workflow()
    if desc is None:
        return 0
    return int(await desc.memo_value(c.MEMO_YIELD_ATTEMPT, 0))


class _ProgressSignaller:
    """Sends progress to the workflow at most every `progress_interval_s`, phase changes at once.

    Every signal is an event in the workflow's history, so the rate is bounded; viewers read the
    state with queries, which cost no history. A signal goes out in a task of its own, one at a
    time, and `send` never waits for it: with Temporal unreachable the client retries a signal
    for many seconds, and the activity must go on heartbeating meanwhile (else the SDK and the
    server take it for dead).
    """

    def __init__(self, req: c.VideoRequest, attempt: int) -> None:
        self._req = req
        self._attempt = attempt
        self._last: tuple[str, int] | None = None
        self._last_at = 0.0
        self._enabled = True
        self._inflight: asyncio.Task[None] | None = None

    async def send(self, p: _Progress, *, force: bool = False) -> None:
        now = time.monotonic()
        key = (p.phase, p.step)
        if key == self._last or not self._enabled:
            return
        if self._inflight is not None and not self._inflight.done():
            return  # the next call sends the progress of then
        phase_changed = self._last is None or self._last[0] != p.phase
        if not (force or phase_changed or now - self._last_at >= self._req.progress_interval_s):
            return
        self._last, self._last_at = key, now
        handle = self._handle()
        if handle is not None:
            self._inflight = asyncio.create_task(self._signal(handle, self._update(p)))

    async def send_now(self, p: _Progress) -> None:
        """Send `p` and wait until it is delivered (at most DESCRIBE_TIMEOUT_S): for a report
        the workflow must have before the attempt ends."""
        handle = self._handle()
        if handle is None:
            return
        if self._inflight is not None:
            await asyncio.wait({self._inflight}, timeout=DESCRIBE_TIMEOUT_S)
        try:
            await asyncio.wait_for(self._signal(handle, self._update(p)), DESCRIBE_TIMEOUT_S)
        except TimeoutError:  # Temporal slow or away: the attempt still ends, uncounted
            log.warning("progress signal timed out", job_id=self._req.job_id, phase=p.phase)

    def _update(self, p: _Progress) -> c.ProgressUpdate:
        return c.ProgressUpdate(
            attempt=self._attempt,
            phase=p.phase,
            step=p.step,
            total_steps=p.total,
            resumed_from_step=p.resumed_from,
            wasted_steps=p.wasted,
        )

    def _handle(self) -> WorkflowHandle[Any, Any] | None:
        if not self._enabled:
            return None
        try:
            client = activity.client()
        except RuntimeError:  # no client: an ActivityEnvironment without one (unit tests)
            self._enabled = False
            return None
        return client.get_workflow_handle(activity.info().workflow_id or "")

    async def _signal(self, handle: WorkflowHandle[Any, Any], update: c.ProgressUpdate) -> None:
        try:
            await handle.signal(c.SIGNAL_PROGRESS, update)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # progress is best effort; the job itself must not fail on it
            log.warning("progress signal failed", job_id=self._req.job_id, error=str(err))


def _lease_lost(details: activity.ActivityCancellationDetails | None = None) -> bool:
    """Whether a cancellation means that Temporal no longer counts on this attempt (it timed
    out, on the server or in the SDK, which gives up when it cannot deliver heartbeats, or the
    server does not know it), rather than that the job is cancelled."""
    d = details if details is not None else activity.cancellation_details()
    return d is not None and (d.timed_out or d.not_found) and not d.cancel_requested


def _store_unavailable(what: str, err: Exception) -> ApplicationError:
    """A retryable failure for a store that cannot be read: the retry tries again later (the
    heartbeat still names the checkpoints) rather than starting over."""
    return ApplicationError(
        f"object store unreadable while {what}: {type(err).__name__}: {err}",
        type=c.ErrorCode.STORE_UNAVAILABLE,
    )


async def _heartbeating(aw: Awaitable[T], run: _Run) -> T:
    """Await `aw` to the end, like `_uninterruptible`, heartbeating the attempt's details every
    `WAIT_HEARTBEAT_S` meanwhile: a wait on a slow or unreachable store must not look like a
    dead worker to the server."""
    task = asyncio.ensure_future(aw)
    while not task.done():
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=WAIT_HEARTBEAT_S)
        except TimeoutError:
            activity.heartbeat(run.details())
        except asyncio.CancelledError:
            continue
        except Exception:
            break
    return task.result()


async def _sleep_heartbeating(seconds: float, run: _Run) -> None:
    """Sleep, heartbeating every `WAIT_HEARTBEAT_S`; cancellation ends it (and is raised)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        activity.heartbeat(run.details())
        await asyncio.sleep(min(left, WAIT_HEARTBEAT_S))


async def _uninterruptible(aw: Awaitable[T]) -> T:
    """Await `aw` to the end even if this coroutine is cancelled meanwhile (the cancellation is
    not lost: the activity checks `activity.is_cancelled()` or re-raises where it matters)."""
    task = asyncio.ensure_future(aw)
    await _wait_uninterrupted(task)
    return task.result()


async def _wait_uninterrupted(task: asyncio.Future[Any]) -> None:
    """Wait for `task` even if this coroutine is cancelled again meanwhile."""
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            continue
        except Exception:
            return
