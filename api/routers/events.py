"""`GET /v1/videos/{id}/events`: a job's state changes as server-sent events.

Each event is `event: progress|completed|failed|cancelled`, `id: <seq>` and the Video object as
JSON `data`, until the job ends. A viewer that reconnects with `Last-Event-ID` gets only newer
events. The stream reads the workflow with queries, which add nothing to its history, so any
number of viewers cost Temporal no history growth. Quiet periods carry keep-alive comments.

The stream never hangs on a dependency: when Temporal stops answering mid-stream, or the server
is shutting down, it sends a `retry:` hint and a comment saying why, and closes; the viewer
reconnects after that many milliseconds with `Last-Event-ID` (a browser's EventSource does so
by itself) and misses nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

import structlog
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse
from temporalio.client import WorkflowExecution as Execution
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle

from api import errors, jobs, presenter
from api.deps import ClientDep, KeyDep, SettingsDep, StoreDep
from api.schemas import Video
from videogen import contracts as c
from videogen.settings import Settings

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/v1/videos", tags=["events"])

END_ID = "end"
# Also look at the execution itself every this many polls, whatever the queries say.
DESCRIBE_EVERY = 20
# A stream ended by a shutdown: reconnect soon, to another replica.
SHUTDOWN_RETRY_MS = 1000


def sse(event: str, event_id: str, video: Video) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {video.model_dump_json()}\n\n"


def retry_hint(retry_ms: int, reason: str) -> str:
    """A comment saying why the stream ends and the SSE `retry` field: no event is dispatched,
    the viewer waits `retry_ms` and reconnects with the Last-Event-ID it has."""
    return f": {reason}; reconnect with Last-Event-ID\nretry: {retry_ms}\n\n"


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    """Sleep `timeout_s`, or less if `event` is set; whether it is."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        return False
    return True


def _last_seq(last_event_id: str | None) -> int:
    """The seq a reconnecting viewer saw last; -1 for none or an id we did not send."""
    try:
        return int(last_event_id) if last_event_id is not None else -1
    except ValueError:
        return -1


@router.get(
    "/{video_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def video_events(
    video_id: str,
    request: Request,
    key: KeyDep,
    settings: SettingsDep,
    client: ClientDep,
    store: StoreDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    # Ownership and existence are checked before the stream starts: a 404 is a 404.
    handle, ex = await jobs.owned_handle(client, store, video_id, key)
    if last_event_id == END_ID:
        # The viewer has the final event: 204 tells a browser's EventSource to stop reconnecting.
        return Response(status_code=204)  # type: ignore[return-value]

    async def stream() -> AsyncIterator[str]:
        try:
            async for chunk in _events(request, settings, handle, ex, _last_seq(last_event_id)):
                yield chunk
        except Exception as err:
            unavailable = errors.as_unavailable(err)
            if unavailable is None:
                raise
            log.warning("event stream ended early", job_id=video_id, error=unavailable.message)
            retry_ms = (unavailable.retry_after_s or errors.RETRY_AFTER_S) * 1000
            yield retry_hint(retry_ms, unavailable.message)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    request: Request, settings: Settings, handle: WorkflowHandle, ex: Execution, seen: int
) -> AsyncIterator[str]:
    """The stream's events after seq `seen`, until the job ends or the server shuts down."""
    draining: asyncio.Event = request.app.state.draining
    quiet_since = time.monotonic()
    polls = 0
    while not await request.is_disconnected():
        if draining.is_set():
            yield retry_hint(SHUTDOWN_RETRY_MS, "the server is shutting down")
            return
        # The query refuses closed workflows (terminated, timed out: no signal tells them).
        state = await presenter.query_state(handle)
        polls += 1
        if (
            state is None
            or state.status not in (c.Status.QUEUED, c.Status.IN_PROGRESS)
            or (polls % DESCRIBE_EVERY == 0)
        ):
            current = await handle.describe()
            if current.status != WorkflowExecutionStatus.RUNNING:
                video = await presenter.to_video(handle, current)
                yield sse(video.status, END_ID, video)
                return
        if state is not None and state.seq > seen:
            video = await presenter.to_video(handle, ex, live=False)
            presenter.apply_state(video, state)
            yield sse("progress", str(state.seq), video)
            seen, quiet_since = state.seq, time.monotonic()
        elif time.monotonic() - quiet_since >= settings.events_keepalive_s:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await _wait(draining, settings.events_poll_s)
