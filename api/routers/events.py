"""`GET /v1/videos/{id}/events`: a job's state changes as server-sent events.

Each event is `event: progress|completed|failed|cancelled`, `id: <seq>` and the Video object as
JSON `data`, until the job ends. A viewer that reconnects with `Last-Event-ID` gets only newer
events. The stream reads the workflow with queries, which add nothing to its history, so any
number of viewers cost Temporal no history growth. Quiet periods carry keep-alive comments.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse
from temporalio.client import WorkflowExecutionStatus

from api import jobs, presenter
from api.deps import ClientDep, KeyDep, SettingsDep, StoreDep
from api.schemas import Video
from videogen import contracts as c

router = APIRouter(prefix="/v1/videos", tags=["events"])

END_ID = "end"
# Also look at the execution itself every this many polls, whatever the queries say.
DESCRIBE_EVERY = 20


def sse(event: str, event_id: str, video: Video) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {video.model_dump_json()}\n\n"


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
        seen = _last_seq(last_event_id)
        quiet_since = time.monotonic()
        polls = 0
        while not await request.is_disconnected():
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
            await asyncio.sleep(settings.events_poll_s)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
