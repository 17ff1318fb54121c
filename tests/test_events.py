"""Server-sent events of a job over real HTTP: increasing steps, a final event, resumption with
Last-Event-ID, keep-alives while nothing happens, and the same 404 rules as the Video object."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from helpers import direct_request, submit, wait_for
from temporalio.client import Client

from api import jobs
from videogen.settings import ApiKey
from videogen.stack import Stack
from videogen.temporal import connect


def read_events(
    api: httpx.Client,
    video_id: str,
    last_event_id: str | None = None,
    stop_after: int | None = None,
) -> list[tuple[str, str, Any]]:
    """(id, event, data) of a raw SSE stream; comments come back as ("", ":", text)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    out: list[tuple[str, str, Any]] = []
    with api.stream(
        "GET", f"/v1/videos/{video_id}/events", headers=headers, timeout=httpx.Timeout(30, read=60)
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in resp.iter_lines():
            if line.startswith(":"):
                out.append(("", ":", line[1:].strip()))
            elif line == "":
                if fields:
                    out.append((fields["id"], fields["event"], json.loads(fields["data"])))
                    fields = {}
            else:
                name, _, value = line.partition(": ")
                fields[name] = value
            if stop_after is not None and sum(1 for e in out if e[1] != ":") >= stop_after:
                break
    return out


def test_stream_shows_increasing_steps_then_completed(api: httpx.Client) -> None:
    # Long enough (a few seconds) that a stream opened a moment after the submit, on a loaded
    # machine, still sees several steps go by at the API's 0.5 s poll.
    v = submit(api, num_inference_steps=150, seed=21)
    events = [e for e in read_events(api, v["id"]) if e[1] != ":"]
    *progress, final = events
    assert final[:2] == ("end", "completed") and final[2]["status"] == "completed"
    assert final[2]["progress"] == 100
    steps = [d["step"] for _, name, d in progress if d["phase"] == "denoising"]
    assert len(set(steps)) >= 3 and steps == sorted(steps), steps
    seqs = [int(i) for i, _, _ in progress]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # The stream of a finished job is just its final event; after "end" there is nothing.
    assert [e[:2] for e in read_events(api, v["id"])] == [("end", "completed")]
    # A viewer that has the final event is told to stop reconnecting (EventSource obeys 204).
    done = api.get(f"/v1/videos/{v['id']}/events", headers={"Last-Event-ID": "end"})
    assert done.status_code == 204


def test_last_event_id_resumes_after_what_was_seen(api: httpx.Client) -> None:
    v = submit(api, num_inference_steps=60, seed=22)
    first = [e for e in read_events(api, v["id"], stop_after=3) if e[1] == "progress"]
    seen = first[-1][0]
    rest = [e for e in read_events(api, v["id"], last_event_id=seen) if e[1] != ":"]
    assert rest and all(i == "end" or int(i) > int(seen) for i, _, _ in rest)
    assert rest[-1][1] == "completed"


@pytest.fixture
async def client(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Client:
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{stack.temporal_port}")
    return await connect(wait_s=10)


async def test_quiet_stream_keeps_alive_and_ends_when_the_job_is_terminated(
    stack: Stack, api: httpx.Client, client: Client
) -> None:
    req = direct_request(stack, gpu_task_queue="nobody-serves-this")  # stays queued
    await jobs.start(client, req, ApiKey("k", "dev", "paid"))
    started = time.monotonic()
    events = read_events(api, req.job_id, stop_after=1)
    assert events[-1][1] == "progress" and events[-1][2]["status"] == "queued"
    quiet = []
    with api.stream(
        "GET", f"/v1/videos/{req.job_id}/events", headers={"Last-Event-ID": events[-1][0]}
    ) as resp:
        for line in resp.iter_lines():
            if line.startswith(":"):
                quiet.append(line)
                if len(quiet) == 2:  # closed by an operator: no signal, no state change
                    await client.get_workflow_handle(req.job_id).terminate("operator")
            if line.startswith("event: "):
                final = line.removeprefix("event: ")
                break
    assert quiet and final == "failed"
    assert time.monotonic() - started < 30
    v = wait_for(api, req.job_id)
    assert v["status"] == "failed" and v["error"]["code"] == "terminated"


def test_events_of_someone_elses_job_are_404(api: httpx.Client, other_api: httpx.Client) -> None:
    v = submit(api)
    r = other_api.get(f"/v1/videos/{v['id']}/events")
    assert r.status_code == 404 and r.json()["error"]["code"] == "video_not_found"
    assert api.get("/v1/videos/video_nope/events").status_code == 404
