"""The `VideoGeneration` workflow: one video, from a validated request to stored MP4.

Deterministic by construction: no torch, boto3, clock or randomness here; the heavy work lives
in activities on their own task queues (GPU: diffusion; CPU: encoding and cleanup). Progress
arrives by signal from the GPU activity and is served by the `status` query. As it ends, a job
starts (and abandons) a `WebhookDelivery` child per webhook event and a `VideoRetention` child
that deletes its files when they expire (workflows/notify.py).
"""

from __future__ import annotations

import asyncio
import builtins
import json
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    TimeoutError,
    TimeoutType,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from videogen import contracts as c

# Preemption-class failures retry forever (a spot fleet can lose a job many times); input that
# cannot be generated never retries.
GPU_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
    non_retryable_error_types=c.NON_RETRYABLE_ERRORS,
)
CPU_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=c.NON_RETRYABLE_ERRORS,
)

# A worker offered a warm-up while busy (or without the model) says so at once: another idle
# one, or the same one once free, takes it soon after. Bounded by the job's GPU start timeout.
WARM_UP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=1.5,
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=0,
)
# Cold starts per job, then it waits on its warm queue for good: bounds the job's history
# should swaps keep losing it to other jobs.
MAX_COLD_STARTS = 20

# CPU activities heartbeat (activities/heartbeating.py): a completion lost while Temporal was
# unreachable, or a dead CPU worker, is retried this long after, not after the start-to-close
# timeout (10 min for an encode), which stays as the bound of a hung but heartbeating run.
CPU_HEARTBEAT_TIMEOUT = timedelta(seconds=15)

# Share of `progress` (0-100) each phase ends at; denoising fills the span before decoding.
PROGRESS_STARTING = 1
PROGRESS_DECODING = 92
PROGRESS_ENCODING = 95

# A waiting job asks for room at most this many times (each after another `max_wait_s`): bounds
# its history when every running job refuses (all at their yield limit, say).
MAX_MAKE_ROOM = 20
MAKE_ROOM_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
# The priority key a job started without one runs at (the server's default, mid-range).
DEFAULT_PRIORITY = 3


@workflow.defn(name=c.WORKFLOW_NAME)
class VideoGeneration:
    def __init__(self) -> None:
        self._state = c.JobStatus()
        self._deadline_passed = False
        self._req: c.VideoRequest | None = None
        # When the current GPU attempt first reported (`min_run_s` counts from there), and the
        # attempt asked to yield (0: none).
        self._attempt_started_at: datetime | None = None
        self._yield_attempt = 0

    @workflow.query(name=c.QUERY_STATUS)
    def status(self) -> c.JobStatus:
        return self._state

    @workflow.signal(name=c.SIGNAL_PROGRESS)
    def report_progress(self, update: c.ProgressUpdate) -> None:
        s = self._state
        # A stale attempt (timed out, retried elsewhere) may still report: ignore it. Reports
        # after the GPU phase ended (late signal delivery) must not move the job backwards.
        if update.attempt < s.attempt or s.status not in (c.Status.QUEUED, c.Status.IN_PROGRESS):
            return
        if s.phase == c.Phase.ENCODING:
            return
        if s.status == c.Status.QUEUED:
            self._change(status=c.Status.IN_PROGRESS)
        if update.attempt != s.attempt:
            self._attempt_started_at = workflow.now()
        if update.phase == c.Phase.YIELDED:
            self._change(phase=c.Phase.YIELDED, yields=s.yields + 1)
            return
        total = update.total_steps or s.total_steps
        if update.phase in (c.Phase.DENOISING, c.Phase.RESUMING) and total:
            span = PROGRESS_DECODING - PROGRESS_STARTING
            progress = PROGRESS_STARTING + span * update.step // total
        elif update.phase == c.Phase.DECODING:
            progress = PROGRESS_DECODING
        else:
            progress = max(s.progress, PROGRESS_STARTING)
        self._change(
            attempt=update.attempt,
            phase=update.phase,
            step=update.step,
            total_steps=total,
            resumed_from_step=update.resumed_from_step,
            wasted_steps=max(s.wasted_steps, update.wasted_steps),
            progress=progress,
        )

    @workflow.update(name=c.UPDATE_YIELD)
    def request_yield(self, ask: c.YieldRequest) -> c.YieldAnswer:
        """Accepted (see the validator): the current attempt hands its GPU over at its next
        step boundary, and reads so from the memo."""
        s = self._state
        self._yield_attempt = s.attempt
        workflow.upsert_memo({c.MEMO_YIELD_ATTEMPT: s.attempt})
        workflow.logger.info(
            "asked to yield", extra={"by_job_id": ask.by_job_id, "attempt": s.attempt}
        )
        return c.YieldAnswer(attempt=s.attempt, step=s.step)

    @request_yield.validator
    def _may_yield(self, ask: c.YieldRequest) -> None:
        """Refused (nothing recorded in history) unless this job is denoising at a lower
        priority than the asker's, has run `min_run_s` since its attempt started, has yields
        left and is not already yielding."""
        s, req = self._state, self._req
        if req is None or s.status != c.Status.IN_PROGRESS or s.phase != c.Phase.DENOISING:
            raise _refused(f"not denoising (phase {s.phase})")
        own = _priority()
        if own <= ask.priority:
            raise _refused(f"priority {own} is not lower than the asker's {ask.priority}")
        if s.yields >= req.max_yields:
            raise _refused(f"yielded {s.yields} time(s); its tier allows {req.max_yields}")
        if self._yield_attempt == s.attempt:
            raise _refused(f"attempt {s.attempt} is already yielding")
        ran = (workflow.now() - (self._attempt_started_at or workflow.now())).total_seconds()
        if ran < req.min_run_s:
            raise _refused(f"ran {ran:.1f} s of its attempt; must run {req.min_run_s:g} s")

    def _change(
        self, *, status: c.Status | None = None, gen_seconds: float | None = None, **fields: object
    ) -> None:
        """Every change of the job's state goes through here: the fields, then the status
        (mirrored in its search attribute), as one event for viewers (`seq` + 1)."""
        for name, value in fields.items():
            if not hasattr(self._state, name):
                raise AttributeError(f"JobStatus has no field {name!r}")
            setattr(self._state, name, value)
        if status is not None:
            self._state.status = status
            updates: list[SearchAttributeUpdate[Any]] = [c.STATUS_KEY.value_set(status)]
            if gen_seconds is not None:  # one upsert command either way: replay stays compatible
                updates.append(c.GEN_SECONDS_KEY.value_set(gen_seconds))
            workflow.upsert_search_attributes(updates)
        self._state.seq += 1

    @workflow.run
    async def run(self, req: c.VideoRequest) -> c.JobResult:
        self._req = req
        self._state.total_steps = req.num_inference_steps
        # workflow.logger: silent while replaying; its lines carry workflow and run id.
        workflow.logger.info(
            "job started", extra={"model": req.model, "tier": req.tier, "user": req.user}
        )
        if req.webhook_url and c.WEBHOOK_PROGRESS_EVENT in req.webhook_events:
            # A task of this workflow (deterministic: it runs on the workflow's event loop).
            self._progress_task = asyncio.create_task(self._progress_webhooks(req))
        try:
            gen = await self._generate_in_time(req)
            if self._state.status == c.Status.QUEUED:  # finished before its first signal arrived
                self._change(status=c.Status.IN_PROGRESS)
            self._change(
                phase=c.Phase.ENCODING,
                progress=PROGRESS_ENCODING,
                attempt=gen.attempt,
                resumed_from_step=gen.resumed_from_step,
                wasted_steps=max(self._state.wasted_steps, gen.wasted_steps),
            )
            encoded = await workflow.execute_activity(
                c.ACTIVITY_ENCODE,
                c.EncodeInput(
                    job_id=req.job_id,
                    frames_key=gen.frames_key,
                    fps=req.fps,
                    model=req.model,
                    frames_sha256=gen.frames_sha256,
                    width=req.width,
                    height=req.height,
                ),
                result_type=c.EncodeOutput,
                task_queue=req.cpu_task_queue,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=CPU_HEARTBEAT_TIMEOUT,
                retry_policy=CPU_RETRY,
            )
            await self._cleanup(req, remove_outputs=False)
        except (asyncio.CancelledError, ActivityError) as err:
            if self._deadline_passed:
                code = (
                    c.ErrorCode.WINDOW_EXPIRED
                    if req.deadline_is_window
                    else c.ErrorCode.DEADLINE_EXCEEDED
                )
                raise await self._fail(req, code, self._past_deadline(req)) from err
            if is_cancelled_exception(err):
                # The GPU activity was cancelled and has stopped (WAIT_CANCELLATION_COMPLETED):
                # clean up what it left, then end the workflow as cancelled.
                self._change(status=c.Status.CANCELLED, phase=c.Phase.CANCELLED)
                await self._cleanup(req, remove_outputs=True)
                await self._notify(req, c.Status.CANCELLED)
                _ended(req, c.Status.CANCELLED)
                raise
            assert isinstance(err, ActivityError)
            raise await self._fail(req, *_describe_failure(err)) from err

        result = c.JobResult(
            video=encoded,
            attempt=gen.attempt,
            device=gen.device,
            generation_seconds=gen.generation_seconds,
            resumed_from_step=gen.resumed_from_step,
            wasted_steps=self._state.wasted_steps,
            warm=gen.warm,
            model_load_seconds=gen.model_load_seconds,
            yields=self._state.yields,
        )
        self._change(
            status=c.Status.COMPLETED,
            gen_seconds=gen.generation_seconds,
            result=result,
            phase=c.Phase.COMPLETED,
            progress=100,
        )
        if req.retention_s > 0:
            await workflow.start_child_workflow(
                c.RETENTION_WORKFLOW,
                c.RetentionInput(
                    job_id=req.job_id, seconds=req.retention_s, cpu_task_queue=req.cpu_task_queue
                ),
                id=f"{req.job_id}-retention",
                task_queue=req.cpu_task_queue,
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
            )
        await self._notify(req, c.Status.COMPLETED)
        _ended(
            req,
            c.Status.COMPLETED,
            attempt=gen.attempt,
            generation_seconds=round(gen.generation_seconds, 3),
        )
        return result

    async def _fail(self, req: c.VideoRequest, code: str, message: str) -> ApplicationError:
        """End the job as failed: its state, its files, its webhook; the error to raise."""
        self._change(
            status=c.Status.FAILED,
            phase=c.Phase.FAILED,
            error=c.JobError(code=code, message=message),
        )
        await self._cleanup(req, remove_outputs=True)
        await self._notify(req, c.Status.FAILED)
        _ended(req, c.Status.FAILED, code=code)
        return ApplicationError(message, type=code, non_retryable=True)

    async def _generate_in_time(self, req: c.VideoRequest) -> c.GenerateOutput:
        """The GPU phase, within the job's deadline if it has one (`expires_after_s`): at the
        deadline it is cancelled, so a job no GPU took never uses one, and a render still
        going stops at its next step (the GPU is free at once)."""
        if not req.deadline_s:
            return await self._generate(req)
        elapsed = (workflow.now() - workflow.info().workflow_start_time).total_seconds()
        generating = asyncio.create_task(self._generate(req))
        done, _ = await workflow.wait([generating], timeout=max(0.0, req.deadline_s - elapsed))
        if not done:
            self._deadline_passed = True
            generating.cancel()
        return await generating

    def _past_deadline(self, req: c.VideoRequest) -> str:
        """What the deadline did: kept the job off a GPU, or stopped its render."""
        s = self._state
        what = "its tier's completion window" if req.deadline_is_window else "its deadline"
        if s.status == c.Status.QUEUED:
            return (
                f"not started within {what} ({req.deadline_s:g} s after submission): no "
                "GPU was free in time, and it used none"
            )
        return (
            f"stopped at step {s.step} of {s.total_steps}: {what} "
            f"({req.deadline_s:g} s after submission) passed while it rendered"
        )

    async def _generate(self, req: c.VideoRequest) -> c.GenerateOutput:
        """The GPU phase. With cold-start routing, a job (or a retry of it) that no warm worker
        picks up within `cold_start_after_s` (a job whose warm queue no worker polled lately:
        at once, `cold_start_now`) has an idle worker load its model (the warm-up activity on
        the cold queue, which that worker answers once it polls the job's warm queue), and is
        offered to its warm queue again, attempts counting on."""
        start_timeout = (
            timedelta(seconds=req.gpu_start_timeout_s) if req.gpu_start_timeout_s else None
        )
        base = 0
        if req.cold_queue:
            if req.cold_start_now:
                await self._warm_up(req, start_timeout)
            for _ in range(MAX_COLD_STARTS):
                try:
                    return await self._offer(req, base, timedelta(seconds=req.cold_start_after_s))
                except ActivityError as err:
                    if not _not_picked_up(err):
                        raise
                # The timed-out activity's attempts report no more: the next ones count on.
                base = self._state.attempt
                await self._warm_up(req, start_timeout)
        return await self._offer(req, base, start_timeout)

    async def _warm_up(self, req: c.VideoRequest, start_timeout: timedelta | None) -> None:
        await workflow.execute_activity(
            c.ACTIVITY_WARM_UP,
            c.WarmUpInput(
                job_id=req.job_id,
                model=req.model,
                model_version=req.model_version,
                warm_queue=req.gpu_task_queue,
            ),
            result_type=c.WarmUpOutput,
            task_queue=req.cold_queue,
            # A model load from disk: minutes for a large one; it heartbeats while it loads.
            start_to_close_timeout=timedelta(minutes=30),
            schedule_to_start_timeout=start_timeout,
            heartbeat_timeout=timedelta(seconds=req.heartbeat_timeout_s),
            retry_policy=WARM_UP_RETRY,
        )

    async def _offer(
        self, req: c.VideoRequest, base: int, start_timeout: timedelta | None
    ) -> c.GenerateOutput:
        """The GPU activity; for a tier that preempts, with room made for it (`_make_room`)
        while it waits unstarted."""
        gpu = self._start_gpu(req, base, start_timeout)
        if not req.preempt_after_s or self._state.status != c.Status.QUEUED:
            return await gpu
        making_room = asyncio.create_task(self._make_room(req, gpu))
        try:
            return await gpu
        finally:
            making_room.cancel()

    async def _make_room(self, req: c.VideoRequest, gpu: asyncio.Future[Any]) -> None:
        """Each `preempt_after_s` the job waits unstarted, ask the CPU queue to have a
        lower-priority running job of its GPU queue yield. The GPU queue is ordered by
        priority, so the GPU freed goes to this job (or to one of higher priority still)."""

        def started() -> bool:
            return gpu.done() or self._state.status != c.Status.QUEUED

        for n in range(1, MAX_MAKE_ROOM + 1):
            try:
                await workflow.wait_condition(started, timeout=req.preempt_after_s)
                return
            except builtins.TimeoutError:  # not temporalio's TimeoutError (imported here)
                pass
            try:
                room = await self._ask_for_room(req, n)
            except ActivityError as err:  # no room this round; the job keeps its place
                workflow.logger.warning("make_room failed", extra={"error": str(err.cause)})
                continue
            workflow.logger.info(
                "asked for room", extra={"victim": room.victim_job_id, "reason": room.reason}
            )

    async def _ask_for_room(self, req: c.VideoRequest, n: int) -> c.MakeRoomOutput:
        return await workflow.execute_activity(
            c.ACTIVITY_MAKE_ROOM,
            c.MakeRoomInput(
                job_id=req.job_id,
                gpu_task_queue=req.gpu_task_queue,
                model=req.model,
                priority=_priority(),
                round=n,
            ),
            result_type=c.MakeRoomOutput,
            task_queue=req.cpu_task_queue,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=MAKE_ROOM_RETRY,
        )

    def _start_gpu(
        self, req: c.VideoRequest, base: int, start_timeout: timedelta | None
    ) -> asyncio.Future[c.GenerateOutput]:
        s = self._state
        return workflow.start_activity(
            c.ACTIVITY_GENERATE,
            c.GenerateInput(
                request=req,
                submitted_at=workflow.info().workflow_start_time.timestamp(),
                attempt_base=base,
                prior_reached_step=s.step if base else 0,
                prior_wasted_steps=s.wasted_steps if base else 0,
            ),
            result_type=c.GenerateOutput,
            task_queue=req.gpu_task_queue,
            start_to_close_timeout=timedelta(hours=2),
            schedule_to_start_timeout=start_timeout,
            heartbeat_timeout=timedelta(seconds=req.heartbeat_timeout_s),
            retry_policy=GPU_RETRY,
            # The GPU must really have stopped before the workflow reports `cancelled`.
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

    async def _notify(self, req: c.VideoRequest, status: c.Status) -> None:
        """Hand the job's final event to a durable, abandoned delivery workflow (if asked)."""
        event = f"video.{status}"
        wanted = req.webhook_events or c.WEBHOOK_FINAL_EVENTS
        if req.webhook_url and event in wanted:
            await self._send(req, event, status)

    async def _progress_webhooks(self, req: c.VideoRequest) -> None:
        """`video.progress` at each phase change and each quarter of the denoising."""
        sent: tuple[str, str, int] | None = None
        while True:

            def moved(last: tuple[str, str, int] | None = sent) -> bool:
                return self._milestone() != last

            await workflow.wait_condition(moved)
            if self._state.status not in (c.Status.QUEUED, c.Status.IN_PROGRESS):
                return  # the final event is _notify's
            sent = self._milestone()
            await self._send(req, c.WEBHOOK_PROGRESS_EVENT, f"progress-{self._state.seq}")

    def _milestone(self) -> tuple[str, str, int]:
        s = self._state
        return s.status, s.phase, s.progress // 25

    async def _send(self, req: c.VideoRequest, event: str, tag: str) -> None:
        s = self._state
        payload = {
            "type": event,
            "timestamp": workflow.now().isoformat(),
            "data": {
                "id": req.job_id,
                "object": "video",
                "status": s.status,
                "phase": s.phase,
                # As the Video object shows them: the model asked for, the version it ran on.
                "model": req.requested_model or req.model,
                "model_version": c.model_ref(req.model, req.model_version),
                "progress": s.progress,
                "step": s.step,
                "total_steps": s.total_steps,
                "attempt": s.attempt,
                "resumed_from_step": s.resumed_from_step,
                "error": {"code": s.error.code, "message": s.error.message} if s.error else None,
            },
        }
        await workflow.start_child_workflow(
            c.WEBHOOK_WORKFLOW,
            c.WebhookInput(
                job_id=req.job_id,
                user=req.user,
                url=req.webhook_url,
                event=event,
                webhook_id=f"msg_{req.job_id}_{tag}",
                body=json.dumps(payload, separators=(",", ":")),
                cpu_task_queue=req.cpu_task_queue,
                model=req.model,
            ),
            id=f"{req.job_id}-webhook-{tag}",
            task_queue=req.cpu_task_queue,
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
        )

    async def _cleanup(self, req: c.VideoRequest, *, remove_outputs: bool) -> None:
        await workflow.execute_activity(
            c.ACTIVITY_CLEANUP,
            c.CleanupInput(
                job_id=req.job_id,
                remove_outputs=remove_outputs,
                model=req.model,
                user=req.user,
                tier=req.tier,
            ),
            task_queue=req.cpu_task_queue,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=CPU_HEARTBEAT_TIMEOUT,
            retry_policy=CPU_RETRY,
        )


def _ended(req: c.VideoRequest, outcome: c.Status, **fields: object) -> None:
    """Count and log a job's end. The workflow metric meter records nothing while replaying,
    so each job is counted once (`videogen_jobs_total` on the CPU worker's /metrics)."""
    workflow.metric_meter().create_counter(
        "videogen_jobs_total",
        "Jobs ended, by outcome (completed, failed, cancelled).",
    ).add(
        1,
        {
            "outcome": outcome,
            "model": req.model,
            # An A/B ramp is read off the outcomes (and GPU time) per version.
            "model_version": c.model_ref(req.model, req.model_version),
            "tier": req.tier,
        },
    )
    workflow.logger.info(
        "job %s", outcome, extra={"outcome": outcome, "model": req.model, **fields}
    )


def _refused(message: str) -> ApplicationError:
    return ApplicationError(message, type=c.ErrorCode.YIELD_REFUSED, non_retryable=True)


def _priority() -> int:
    return workflow.info().priority.priority_key or DEFAULT_PRIORITY


def _not_picked_up(err: ActivityError) -> bool:
    cause = err.cause
    return isinstance(cause, TimeoutError) and cause.type == TimeoutType.SCHEDULE_TO_START


def _describe_failure(err: ActivityError) -> tuple[str, str]:
    """Error code and message for the user from an activity failure chain."""
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return cause.type or "GenerationFailed", cause.message
    if isinstance(cause, TimeoutError) and cause.type == TimeoutType.SCHEDULE_TO_START:
        return "NoWorkerAvailable", (
            "no GPU worker picked the job up in time; is a worker for this model running?"
        )
    return "GenerationFailed", str(cause or err)
