"""Helpers for tests that drive the API of the session's stack."""

from __future__ import annotations

import time
from typing import Any

import httpx

# Small enough for a 2-core CI machine: a job takes about a second.
SMALL = {"size": "64x64", "seconds": 1, "num_inference_steps": 3}


def submit(api: httpx.Client, **body: Any) -> dict[str, Any]:
    payload = {"prompt": "a lighthouse in a storm", **SMALL, **body}
    r = api.post("/v1/videos", json=payload)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(api: httpx.Client, video_id: str, statuses: tuple[str, ...] = (
        "completed", "failed", "cancelled"), timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = api.get(f"/v1/videos/{video_id}").json()
        if v["status"] in statuses:
            return v
        time.sleep(0.1)
    raise AssertionError(f"{video_id} did not reach {statuses} in {timeout_s}s: {v}")
