"""Workflows a job starts as it ends and abandons, so they outlive it.

`WebhookDelivery` retries one webhook with backoff for up to a day: the job itself is already
complete, and its status never waits on a user's endpoint. `VideoRetention` is a durable timer
that deletes the job's assets when they expire. Deterministic: no I/O here.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from videogen import contracts as c

WEBHOOK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    maximum_attempts=0,  # bounded by the schedule-to-close timeout below
    non_retryable_error_types=c.WEBHOOK_NON_RETRYABLE,
)


# One delivery attempt takes at most the activity's own HTTP deadline (10 s) plus the URL check;
# a completion lost while Temporal was unreachable is retried after this, not later.
WEBHOOK_ATTEMPT_TIMEOUT = timedelta(seconds=20)
# The retention cleanup heartbeats (activities/heartbeating.py), like the job's own cleanup.
CLEANUP_HEARTBEAT_TIMEOUT = timedelta(seconds=15)


@workflow.defn(name=c.WEBHOOK_WORKFLOW)
class WebhookDelivery:
    @workflow.run
    async def run(self, inp: c.WebhookInput) -> int:
        return await workflow.execute_activity(
            c.ACTIVITY_WEBHOOK,
            inp,
            result_type=int,
            task_queue=inp.cpu_task_queue,
            start_to_close_timeout=WEBHOOK_ATTEMPT_TIMEOUT,
            schedule_to_close_timeout=timedelta(days=1),
            retry_policy=WEBHOOK_RETRY,
        )


@workflow.defn(name=c.RETENTION_WORKFLOW)
class VideoRetention:
    @workflow.run
    async def run(self, inp: c.RetentionInput) -> int:
        await workflow.sleep(timedelta(seconds=inp.seconds))
        return await workflow.execute_activity(
            c.ACTIVITY_CLEANUP,
            c.CleanupInput(job_id=inp.job_id, remove_outputs=True),
            result_type=int,
            task_queue=inp.cpu_task_queue,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=CLEANUP_HEARTBEAT_TIMEOUT,
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=5)),
        )
