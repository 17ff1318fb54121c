"""Run an activity's blocking work in a thread while the activity heartbeats.

A CPU activity (encode, cleanup) has a heartbeat timeout so that its completion, lost while
Temporal was unreachable, or its worker's death, is noticed within that timeout instead of its
start-to-close timeout: the server retries it, and the retry finds the work done (write-once
outputs, idempotent deletes). Heartbeating while the thread works keeps a long but healthy run
alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from temporalio import activity

T = TypeVar("T")

# Heartbeat this often; the SDK throttles what it sends to 0.8 x the heartbeat timeout anyway.
INTERVAL_S = 1.0


async def in_thread(
    fn: Callable[..., T], *args: Any, details: Callable[[], Any] | None = None
) -> T:
    """`fn(*args)` in a thread, heartbeating every `INTERVAL_S` until it returns. Cancellation
    is re-raised at once (the thread's work is idempotent, so a retry may run it again)."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    while True:
        done, _ = await asyncio.wait({work}, timeout=INTERVAL_S)
        if done:
            return work.result()
        activity.heartbeat(*([details()] if details else []))
