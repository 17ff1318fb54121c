"""Benchmark of priority preemption: paid queue waits behind a flood of free renders, with and
without preemption, in one run on one stack, and the GPU time the yields cost.

One GPU worker is kept busy by free renders (a few always queued behind the running one).
Paid jobs arrive one at a time, alternately in rounds of two tiers that share the GPU queue
and the priority: `paid` preempts (`max_wait_s`), `paidq` waits its turn. A paid job's wait is
its GPU attempt's start minus its workflow's start (server times, benchmarks/history.py). The
scale is shrunk to fit a 2-core CPU: renders of seconds instead of minutes, so `max_wait_s` is
one second instead of the tens a real fleet would use.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
from typing import Any

import httpx

from benchmarks import service
from benchmarks.history import timeline
from benchmarks.results import Benchmark
from videogen import contracts as c

PAID_KEY, QUEUED_KEY, FREE_KEY = "vg-bench-paid", "vg-bench-paidq", "vg-bench-free"
MAX_WAIT_S = 1.0
MIN_RUN_S = 1.0
# A free render (about 10 s here) and the paid job (about 1 s), both at the native 64x64.
FREE = {"size": "64x64", "seconds": 2, "num_inference_steps": 400}
PAID = {"size": "64x64", "seconds": 1, "num_inference_steps": 20}
FREE_QUEUED = 2  # free jobs kept waiting behind the running one
ROUNDS = 2

ENV = {
    **service.PREEMPTION,
    "VIDEOGEN_API_KEYS": f"{PAID_KEY}:payer:paid,{QUEUED_KEY}:waiter:paidq,{FREE_KEY}:flood:free",
    "VIDEOGEN_TIERS": json.dumps(
        {
            "paid": {"priority": 2, "max_wait_s": MAX_WAIT_S},
            "paidq": {"priority": 2},
            "free": {"priority": 4, "max_yields": 100, "min_run_s": MIN_RUN_S},
        }
    ),
}
CONFIG = (
    f"1 GPU worker; free renders {FREE['num_inference_steps']} steps at {FREE['size']}, "
    f"{FREE_QUEUED} always queued; paid jobs {PAID['num_inference_steps']} steps; "
    f"max_wait_s {MAX_WAIT_S:g}, min_run_s {MIN_RUN_S:g}, checkpoints every 4 steps"
)


def _client(stack: Any, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    )


async def _post(api: httpx.AsyncClient, body: dict[str, Any]) -> str:
    r = await api.post("/v1/videos", json={"prompt": service.PROMPT, **body})
    if r.status_code != 200:
        raise RuntimeError(f"POST /v1/videos: {r.status_code} {r.text}")
    return str(r.json()["id"])


async def _flood(api: httpx.AsyncClient, jobs: list[str], stop: asyncio.Event) -> None:
    """Keep one free render running and FREE_QUEUED waiting until `stop`."""
    open_jobs: list[str] = []
    while not stop.is_set():
        still = []
        for job in open_jobs:
            v = (await api.get(f"/v1/videos/{job}")).json()
            if v.get("status") in (c.Status.QUEUED, c.Status.IN_PROGRESS):
                still.append(job)
        open_jobs = still
        while len(open_jobs) < FREE_QUEUED + 1:
            job = await _post(api, {**FREE, "seed": len(jobs)})
            jobs.append(job)
            open_jobs.append(job)
        await asyncio.sleep(0.5)


async def _wait(d: service.Driver, job: str) -> float:
    await d.result(job, timeout_s=300)
    tl = await timeline(d.temporal, job)
    started = tl.activity(c.ACTIVITY_GENERATE).started
    if started is None:
        raise RuntimeError(f"{job}: its GPU activity never started")
    return started - tl.workflow_started


def _yield_costs(stack: Any, job: str) -> list[tuple[float, float]]:
    """(hand-over, restore) seconds per yield of a free job, from its GPU worker's log lines:
    asked to yield → attempt ended, and the next attempt's start → its first step done."""
    events = service.worker_log_events(stack, job)
    costs = []
    for t, event, attempt in events:
        if event != "asked to yield: checkpointing at the next step boundary":
            continue
        ended = service._first([e for e in events if e[2] == attempt], "attempt ended")
        begun = service._first(events, "generation started", attempt + 1)
        first = service._first(events, service.RECOVERED_EVENT, attempt + 1)
        if ended is not None and begun is not None and first is not None:
            costs.append((ended - t, first - begun))
    return costs


async def priority(d: service.Driver, per_round: int, bench: Benchmark) -> None:
    """Paid waits with and without preemption behind a flood of free renders."""
    apis = {k: _client(d.stack, k) for k in (PAID_KEY, QUEUED_KEY, FREE_KEY)}
    rng = random.Random(7)
    free_jobs: list[str] = []
    stop = asyncio.Event()
    flood = asyncio.create_task(_flood(apis[FREE_KEY], free_jobs, stop))
    waits: dict[str, list[float]] = {"with preemption": [], "without preemption": []}
    try:
        await asyncio.sleep(3.0)  # the GPU busy, the queue filled
        for _ in range(ROUNDS):
            for label, key in (("without preemption", QUEUED_KEY), ("with preemption", PAID_KEY)):
                for _ in range(per_round):
                    job = await _post(apis[key], {**PAID, "seed": rng.randrange(10**6)})
                    # One paid job at a time: each finds the GPU busy.
                    waits[label].append(await _wait(d, job))
                    await asyncio.sleep(rng.uniform(1.0, 4.0))
    finally:
        stop.set()
        await flood
    for label, values in waits.items():
        bench.add_distribution(
            f"paid queue wait ({label})", values, quantiles=(50, 95), config=CONFIG
        )
    for job in free_jobs:  # the rest of the flood is not needed
        await apis[FREE_KEY].post(f"/v1/videos/{job}/cancel")
    _report_yields(d, free_jobs, bench)
    for a in apis.values():
        await a.aclose()


def _report_yields(d: service.Driver, free_jobs: list[str], bench: Benchmark) -> None:
    costs = [cost for job in free_jobs for cost in _yield_costs(d.stack, job)]
    bench.add("yields of free renders", len(costs), "yields", len(free_jobs), CONFIG)
    if costs:
        hand, restore = [h for h, _ in costs], [r for _, r in costs]
        bench.add("yield hand-over, median", statistics.median(hand) * 1000, "ms", len(costs))
        bench.add(
            "resume after a yield, median", statistics.median(restore) * 1000, "ms", len(costs)
        )
        lost = sum(hand) + sum(restore)
        bench.add("GPU time lost to yields, total", lost, "s", len(costs), CONFIG)
    print(f"    free renders: {len(free_jobs)}, yields measured: {len(costs)}", flush=True)
