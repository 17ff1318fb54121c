"""Exact times of a job from its Temporal workflow history (the server's own event times).

The workflow id is the video id. For the GPU activity the history says when it was scheduled,
when the attempt that ended it started and when it ended; the progress signals the activity
sends (attempt, phase, step) say when a retried attempt resumed and advanced. The server runs
on the benchmark's machine, so its timestamps and the client's `time.time()` share a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from videogen import contracts as c


@dataclass
class Activity:
    name: str
    scheduled: float
    # Written once the attempt ends, with that attempt's start time (earlier attempts of a
    # retried activity leave no Started event).
    started: float | None = None
    attempt: int = 0
    closed: float | None = None
    outcome: str = ""
    cancel_requested: float | None = None


@dataclass
class Progress:
    at: float
    update: c.ProgressUpdate


@dataclass
class Timeline:
    workflow_started: float
    closed: float | None = None
    outcome: str = ""
    activities: list[Activity] = field(default_factory=list)
    progress: list[Progress] = field(default_factory=list)

    def activity(self, name: str) -> Activity:
        found = [a for a in self.activities if a.name == name]
        if not found:
            raise LookupError(f"no {name} activity in the history")
        return found[0]


def _ts(event: HistoryEvent) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


_CLOSE = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: ("completed", "activity_task_completed"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: ("failed", "activity_task_failed"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: ("timed_out", "activity_task_timed_out"),
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: ("cancelled", "activity_task_canceled"),
}
_WF_CLOSE = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "completed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "failed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "cancelled",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: "terminated",
}


async def timeline(client: Client, job_id: str) -> Timeline:
    """The job's timeline; call it once the workflow has closed (or for what it has so far)."""
    history = await client.get_workflow_handle(job_id).fetch_history()
    tl: Timeline | None = None
    by_id: dict[int, Activity] = {}
    for ev in history.events:
        t = _ts(ev)
        et = ev.event_type
        if et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            tl = Timeline(workflow_started=t)
        elif tl is None:
            continue
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            act = Activity(ev.activity_task_scheduled_event_attributes.activity_type.name, t)
            by_id[ev.event_id] = act
            tl.activities.append(act)
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = ev.activity_task_started_event_attributes
            act = by_id[attrs.scheduled_event_id]
            act.started, act.attempt = t, attrs.attempt
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED:
            attrs = ev.activity_task_cancel_requested_event_attributes
            by_id[attrs.scheduled_event_id].cancel_requested = t
        elif et in _CLOSE:
            outcome, field_name = _CLOSE[et]
            act = by_id[getattr(ev, f"{field_name}_event_attributes").scheduled_event_id]
            act.closed, act.outcome = t, outcome
        elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            attrs = ev.workflow_execution_signaled_event_attributes
            if attrs.signal_name == c.SIGNAL_PROGRESS:
                [update] = await client.data_converter.decode(
                    list(attrs.input.payloads), [c.ProgressUpdate]
                )
                tl.progress.append(Progress(t, update))
        elif et in _WF_CLOSE:
            tl.closed, tl.outcome = t, _WF_CLOSE[et]
    if tl is None:
        raise LookupError(f"{job_id}: no WorkflowExecutionStarted event")
    return tl
