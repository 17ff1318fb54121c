"""Benchmarks of the running service: the embedded stack (Temporal dev server, API, CPU worker,
GPU workers as child processes, exactly as `videogen up` starts them) driven over its HTTP API.

Two stacks, each in a temporary data dir (nothing touches the user's `.data`):
- the *default* stack: one GPU worker and the default settings, except that the dev user's rate
  limits are raised so far that they never bite (they are still checked on every POST) and
  two extra API keys submit to a dedicated pool that no GPU worker serves (admission);
- the *preemption* stack: two GPU workers (one stands by), checkpoints every 4 steps, a 3 s
  heartbeat timeout and progress signals every 0.1 s, as the preemption tests run it.

Times come from the Temporal history where the server records them (benchmarks/history.py),
else from the client's clock on the same machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client, WorkflowFailureError

from api import jobs
from benchmarks.history import Progress, timeline
from benchmarks.results import Benchmark, percentile
from videogen import contracts as c
from videogen import quota
from videogen.devserver import free_port
from videogen.settings import DEV_API_KEY, ApiKey, TierPolicy
from videogen.stack import Stack, gpu_worker_pid
from videogen.storage import FileStore

# The short job of the pickup/overhead runs: about a second on a 2-core CPU.
SHORT: dict[str, Any] = {"size": "64x64", "seconds": 1, "num_inference_steps": 3}
# A job the cancel benchmark interrupts: far longer than the benchmark waits.
LONG = {"size": "128x128", "seconds": 1, "num_inference_steps": 400}
# The preemption benchmark's job (~25 ms a step), interrupted at KILL_AT_STEP.
RECOVERY_JOB = {"size": "128x128", "seconds": 1, "num_inference_steps": 80}
KILL_AT_STEP = 16
# What a retried GPU attempt logs after its first step (activities/diffusion.py).
RECOVERED_EVENT = "recovered: first step after the interruption"
PROMPT = "a lighthouse in a storm"

# Admission keys: jobs go to a dedicated pool no GPU worker polls, so they stay queued and the
# GPU worker does not compete for the CPU while the API is measured.
ADMISSION_KEY = "vg-bench-admission"
ADMISSION_LIMITED_KEY = "vg-bench-admission-limited"
# "Never reached" but nonzero: the API still counts jobs in visibility for each check.
HIGH_LIMIT = 10**7

PREEMPTION = {
    "VIDEOGEN_PROGRESS_INTERVAL_S": "0.1",
    "VIDEOGEN_HEARTBEAT_TIMEOUT_S": "3",
    "VIDEOGEN_CHECKPOINT_POLICY": "steps",
    "VIDEOGEN_CHECKPOINT_EVERY_STEPS": "4",
    "VIDEOGEN_GRACEFUL_SHUTDOWN_S": "30",
}


@dataclass
class Runs:
    """How many runs each benchmark makes (overridable on the command line)."""

    pickup: int = 60  # the pickup and the overhead figures come from the same runs
    cancel: int = 10
    recovery: int = 5
    admission_seconds: float = 15.0
    admission_clients: int = 8
    priority: int = 5  # paid jobs per round and tier (2 rounds)


def _tiers() -> str:
    high = {"user_per_minute": HIGH_LIMIT, "user_concurrent": HIGH_LIMIT}
    return json.dumps(
        {
            "internal": {"priority": 1},
            "paid": {"priority": 2, **high},
            "free": {"priority": 4, **high},
            "bench": {"priority": 3, "dedicated_pool": True},
            "benchlimited": {
                "priority": 3,
                "dedicated_pool": True,
                **high,
                "tier_per_minute": HIGH_LIMIT,
                "tier_concurrent": HIGH_LIMIT,
            },
        }
    )


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {
        "VIDEOGEN_API_KEYS": f"{DEV_API_KEY}:dev:paid,{ADMISSION_KEY}:bench:bench,"
        f"{ADMISSION_LIMITED_KEY}:benchl:benchlimited",
        "VIDEOGEN_TIERS": _tiers(),
        "VIDEOGEN_TASK_QUEUE_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
        "VIDEOGEN_LOG_LEVEL": "INFO",
        **extra,
    }


@contextlib.contextmanager
def running_stack(gpu_workers: int, extra_env: dict[str, str]) -> Iterator[Stack]:
    """A stack in a temporary dir; its logs' tails are printed if something fails."""
    with tempfile.TemporaryDirectory(prefix="videogen-bench-") as tmp:
        data = Path(tmp)
        stack = Stack(
            data_dir=data,
            api_port=free_port(),
            temporal_port=free_port(),
            ui_port=None,
            gpu_workers=gpu_workers,
            log_dir=data / "logs",
            env=_env(extra_env),
        )
        started = time.monotonic()
        try:
            stack.start(timeout_s=240)
            print(
                f"  (stack with {gpu_workers} GPU worker(s) up in "
                f"{time.monotonic() - started:.1f} s)",
                flush=True,
            )
            yield stack
        except BaseException:
            for f in sorted((data / "logs").glob("*.log")):
                print(f"----- {f.name} -----\n{f.read_text(errors='replace')[-3000:]}")
            raise
        finally:
            stack.stop()


class Driver:
    """The API and the Temporal client of one stack, for async benchmark code."""

    def __init__(self, stack: Stack, api: httpx.AsyncClient, temporal: Client) -> None:
        self.stack, self.api, self.temporal = stack, api, temporal

    async def submit(self, body: dict[str, Any]) -> tuple[str, float]:
        """POST a job: (its id, client time just before the request was sent)."""
        sent = time.time()
        r = await self.api.post("/v1/videos", json={"prompt": PROMPT, **body})
        if r.status_code != 200:
            raise RuntimeError(f"POST /v1/videos: {r.status_code} {r.text}")
        return str(r.json()["id"]), sent

    async def get(self, job_id: str) -> dict[str, Any]:
        r = await self.api.get(f"/v1/videos/{job_id}")
        r.raise_for_status()
        return dict(r.json())

    async def result(self, job_id: str, timeout_s: float = 120) -> c.JobResult | None:
        """Wait for the workflow to close (a long poll: no load on the API); None unless it
        completed."""
        handle = self.temporal.get_workflow_handle(job_id, result_type=c.JobResult)
        try:
            return await asyncio.wait_for(handle.result(), timeout_s)
        except WorkflowFailureError:
            return None

    async def wait_step(self, job_id: str, step: int, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            v = await self.get(job_id)
            if v["phase"] == c.Phase.DENOISING and v["step"] >= step:
                return v
            if v["status"] not in (c.Status.QUEUED, c.Status.IN_PROGRESS):
                raise RuntimeError(f"{job_id} ended before step {step}: {v}")
            await asyncio.sleep(0.02)
        raise TimeoutError(f"{job_id} did not reach step {step} in {timeout_s}s")

    async def wait_gpu_scheduled(self, job_id: str, timeout_s: float = 30) -> None:
        """Until the job's GPU activity waits in the queue (its workflow's first task ran)."""
        handle = self.temporal.get_workflow_handle(job_id)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            desc = await handle.describe()
            if any(
                pa.activity_type.name == c.ACTIVITY_GENERATE
                for pa in desc.raw_description.pending_activities
            ):
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"{job_id}: its GPU activity was not scheduled in {timeout_s}s")


@contextlib.asynccontextmanager
async def driver(stack: Stack) -> Any:
    temporal = await stack.client()
    async with httpx.AsyncClient(
        base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {DEV_API_KEY}"}
    ) as api:
        yield Driver(stack, api, temporal)


# -- pickup latency and orchestration overhead -------------------------------------------------


async def short_jobs(
    d: Driver, n: int, pickup: Benchmark | None, overhead: Benchmark | None, gap_s: float = 0.5
) -> None:
    """`n` short jobs one after the other, each on an idle GPU worker; both benchmarks'
    figures come from the same runs."""
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "pickup",
            "to_workflow_started",
            "to_gpu_scheduled",
            "scheduled_to_started",
            "post_response",
            "e2e",
            "model",
            "overhead",
            "encode",
            "overhead_no_encode",
            "gpu_activity",
            "after_gpu",
        )
    }
    # One unmeasured job first: the first job of a fresh stack pays one-off costs (first
    # workflow task, caches) that a pickup on an idle worker does not.
    job, _ = await d.submit({**SHORT, "seed": 0})
    await d.result(job)
    for i in range(n):
        await asyncio.sleep(gap_s)  # the CPU worker's tail of the last job is done; GPU idle
        job, sent = await d.submit({**SHORT, "seed": i + 1})
        answered = time.time()
        res = await d.result(job)
        v = await d.get(job)
        seen = time.time()
        if res is None or v["status"] != c.Status.COMPLETED:
            raise RuntimeError(f"{job} did not complete: {v}")
        tl = await timeline(d.temporal, job)
        gpu = tl.activity(c.ACTIVITY_GENERATE)
        enc = tl.activity(c.ACTIVITY_ENCODE)
        assert gpu.started is not None and gpu.closed is not None
        assert enc.started is not None and enc.closed is not None
        e2e = seen - sent
        s = samples
        s["pickup"].append(gpu.started - sent)
        s["to_workflow_started"].append(tl.workflow_started - sent)
        s["to_gpu_scheduled"].append(gpu.scheduled - sent)
        s["scheduled_to_started"].append(gpu.started - gpu.scheduled)
        s["post_response"].append(answered - sent)
        s["e2e"].append(e2e)
        s["model"].append(res.generation_seconds)
        s["gpu_activity"].append(gpu.closed - gpu.started)
        s["overhead"].append(e2e - res.generation_seconds)
        s["encode"].append(enc.closed - enc.started)
        s["overhead_no_encode"].append(e2e - res.generation_seconds - (enc.closed - enc.started))
        s["after_gpu"].append(seen - gpu.closed)
        if (i + 1) % 10 == 0:
            print(
                f"    {i + 1}/{n} jobs, pickup p50 so far "
                f"{percentile(s['pickup'], 50) * 1000:.0f} ms",
                flush=True,
            )
    job_cfg = ""
    job_desc = (
        f"{SHORT['size']}, {SHORT['seconds']} s (9 frames), "
        f"{SHORT['num_inference_steps']} steps; one at a time, {gap_s:g} s apart"
    )
    if pickup is not None:
        pickup.config["job"] = job_desc
        cfg = "idle worker"
        pickup.add_distribution("POST sent → GPU activity started", s["pickup"], config=cfg)
        for key, label in (
            ("post_response", "POST response time"),
            ("to_workflow_started", "POST sent → workflow started"),
            ("to_gpu_scheduled", "POST sent → GPU activity scheduled"),
            ("scheduled_to_started", "GPU activity scheduled → started"),
        ):
            pickup.add(f"{label} p50", percentile(s[key], 50) * 1000, "ms", n, cfg)
        pickup.samples = {
            k: s[k] for k in ("pickup", "post_response", "to_workflow_started", "to_gpu_scheduled")
        }
    if overhead is not None:
        overhead.config["job"] = job_desc
        overhead.add(
            "end to end (POST sent → GET says completed) p50",
            percentile(s["e2e"], 50),
            "s",
            n,
            job_cfg,
        )
        overhead.add(
            "time in the model (activity's generation_seconds) p50",
            percentile(s["model"], 50),
            "s",
            n,
            job_cfg,
        )
        overhead.add_distribution(
            "overhead = end to end − model", s["overhead"], quantiles=(50, 95), config=job_cfg
        )
        overhead.add(
            "MP4 encode activity (CPU worker) p50",
            percentile(s["encode"], 50) * 1000,
            "ms",
            n,
            job_cfg,
        )
        overhead.add_distribution(
            "overhead without the encode",
            s["overhead_no_encode"],
            quantiles=(50, 95),
            config=job_cfg,
        )
        overhead.add(
            "of which: GPU activity ended → GET says completed p50",
            percentile(s["after_gpu"], 50) * 1000,
            "ms",
            n,
            job_cfg,
        )
        overhead.add(
            "overhead share of end to end (medians)",
            statistics.median(s["overhead"]) / statistics.median(s["e2e"]) * 100,
            "%",
            n,
            job_cfg,
        )
        overhead.samples = {
            k: s[k] for k in ("e2e", "model", "overhead", "encode", "gpu_activity", "after_gpu")
        }


# -- cancel latency ----------------------------------------------------------------------------


async def cancel_latency(d: Driver, n: int, bench: Benchmark) -> None:
    """A long job runs; a short one waits behind it on the single GPU worker; cancel the long
    one and time until the worker is free (it reports the cancellation) and until the waiting
    job starts on it."""
    rng = random.Random(7)
    s: dict[str, list[float]] = {
        k: [] for k in ("api", "reported", "next_started", "cancelled_visible")
    }
    for i in range(n):
        await asyncio.sleep(0.5)
        long_job, _ = await d.submit({**LONG, "seed": 1000 + i})
        await d.wait_step(long_job, 0)
        # Random point in the heartbeat cycle: cancellation arrives with a heartbeat response.
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        queued, _ = await d.submit({**SHORT, "seed": 2000 + i})
        await d.wait_gpu_scheduled(queued)
        sent = time.time()
        r = await d.api.post(f"/v1/videos/{long_job}/cancel")
        s["api"].append(time.time() - sent)
        if r.status_code != 200:
            raise RuntimeError(f"cancel: {r.status_code} {r.text}")
        await d.result(long_job)
        if await d.result(queued) is None:
            raise RuntimeError(f"{queued} did not complete")
        long_tl = await timeline(d.temporal, long_job)
        next_tl = await timeline(d.temporal, queued)
        gpu = long_tl.activity(c.ACTIVITY_GENERATE)
        nxt = next_tl.activity(c.ACTIVITY_GENERATE)
        if gpu.outcome != "cancelled" or nxt.started is None or gpu.closed is None:
            raise RuntimeError(f"unexpected histories: {gpu}, {nxt}")
        if nxt.scheduled > sent:
            raise RuntimeError(
                "the queued job was not waiting when the cancel was sent: "
                f"scheduled {nxt.scheduled - sent:+.3f} s after it; "
                f"{long_tl}, {next_tl}"
            )
        s["reported"].append(gpu.closed - sent)
        s["next_started"].append(nxt.started - sent)
        assert long_tl.closed is not None
        s["cancelled_visible"].append(long_tl.closed - sent)
    bench.config["jobs"] = (
        f"cancelled: {LONG['size']}, {LONG['seconds']} s, "
        f"{LONG['num_inference_steps']} steps; queued behind it: "
        f"{SHORT['size']}, {SHORT['seconds']} s, "
        f"{SHORT['num_inference_steps']} steps"
    )
    bench.config["heartbeat throttle"] = "1 s (default)"
    cfg = "1 GPU worker"
    bench.add_distribution(
        "cancel sent → GPU worker free (next job's activity started)",
        s["next_started"],
        quantiles=(50, 95),
        config=cfg,
    )
    bench.add_distribution(
        "cancel sent → GPU activity reported cancelled",
        s["reported"],
        quantiles=(50, 95),
        config=cfg,
    )
    bench.add(
        "cancel sent → job cancelled (workflow closed) p50",
        percentile(s["cancelled_visible"], 50) * 1000,
        "ms",
        n,
        cfg,
    )
    bench.add("POST /cancel response time p50", percentile(s["api"], 50) * 1000, "ms", n, cfg)
    bench.samples = {k: s[k] for k in ("next_started", "reported", "api")}


# -- admission throughput ----------------------------------------------------------------------


async def closed_loop(
    calls: list[Callable[[], Awaitable[str]]], seconds: float
) -> tuple[dict[str, int], list[float], float]:
    """Each call in its own loop, a new request as soon as the last is answered, for `seconds`
    after a 1 s warm-up (not counted): (outcome counts, latencies, elapsed seconds)."""

    async def one(
        call: Callable[[], Awaitable[str]], until: float, lat: list[float], codes: dict[str, int]
    ) -> None:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            try:
                code = await call()
            except Exception as err:  # a failed request is a figure here, not a crash
                code = type(err).__name__
            lat.append(time.perf_counter() - t0)
            codes[code] = codes.get(code, 0) + 1

    warm_until = time.monotonic() + 1.0
    await asyncio.gather(*(one(call, warm_until, [], {}) for call in calls))
    latencies: list[float] = []
    codes: dict[str, int] = {}
    started = time.monotonic()
    await asyncio.gather(*(one(call, started + seconds, latencies, codes) for call in calls))
    return codes, latencies, time.monotonic() - started


ROUNDS = 3


async def admission(d: Driver, clients: int, seconds: float, bench: Benchmark) -> None:
    """`clients` concurrent connections POST back to back, without rate limits and with limits
    that are checked but never reached; for reference, the same concurrency of bare Temporal
    workflow starts and of the job starts a POST makes, straight to the same server.

    The variants take turns, `ROUNDS` times `seconds / ROUNDS` each: the server slows as its
    database fills, and back-to-back runs would favour whichever ran first."""
    bench.config["request"] = (
        f"{SHORT['size']}, {SHORT['seconds']} s, {SHORT['num_inference_steps']} steps, JSON body"
    )
    bench.config["rounds"] = ROUNDS
    cfg = f"{clients} clients, {seconds:g} s in {ROUNDS} rounds"
    prefix = d.stack.child_env()["VIDEOGEN_TASK_QUEUE_PREFIX"]
    nobody = f"{prefix}-bench-nobody"  # a queue nobody polls
    apis = {
        key: [
            httpx.AsyncClient(
                base_url=d.stack.api_url,
                timeout=30,
                limits=httpx.Limits(max_connections=1),
                headers={"Authorization": f"Bearer {key}"},
            )
            for _ in range(clients)
        ]
        for key in (ADMISSION_KEY, ADMISSION_LIMITED_KEY)
    }
    variants = {
        "no rate limits": [_poster(a) for a in apis[ADMISSION_KEY]],
        "rate limits checked": [_poster(a) for a in apis[ADMISSION_LIMITED_KEY]],
        "bare": [_bare_starter(d, nobody)] * clients,
        "job": [_job_starter(d, nobody)] * clients,
    }
    runs: dict[str, list[tuple[dict[str, int], list[float], float]]] = {v: [] for v in variants}
    try:
        for _ in range(ROUNDS):
            for name, calls in variants.items():
                runs[name].append(await closed_loop(calls, seconds / ROUNDS))
    finally:
        for group in apis.values():
            for a in group:
                await a.aclose()
    for label in ("no rate limits", "rate limits checked"):
        codes, latencies, elapsed = _merge(runs[label])
        total = sum(codes.values())
        ok = sum(v for k, v in codes.items() if k.startswith("2"))
        bench.add(
            f"accepted POST /v1/videos per second ({label})", ok / elapsed, "req/s", total, cfg
        )
        bench.add(
            f"error rate, non-2xx ({label})", (total - ok) / max(total, 1) * 100, "%", total, cfg
        )
        bench.add_distribution(f"POST latency ({label})", latencies, quantiles=(50, 95), config=cfg)
        bench.samples[f"outcomes ({label})"] = codes
        print(f"    outcomes: {codes}", flush=True)
    codes, latencies, elapsed = _merge(runs["bare"])
    n = sum(codes.values())
    bench.add(
        "reference: bare Temporal workflow starts per second (no API)",
        codes.get("ok", 0) / elapsed,
        "req/s",
        n,
        cfg,
    )
    bench.add(
        "reference: workflow start latency p50", percentile(latencies, 50) * 1000, "ms", n, cfg
    )
    bench.samples["outcomes (bare workflow starts)"] = codes
    codes, _, elapsed = _merge(runs["job"])
    bench.add(
        "reference: job workflow starts per second, as POST makes them (no API, no worker)",
        codes.get("ok", 0) / elapsed,
        "req/s",
        sum(codes.values()),
        cfg,
    )
    bench.samples["outcomes (job workflow starts)"] = codes
    _ledger_cost(bench)


def _ledger_cost(bench: Benchmark, repeats: int = 200) -> None:
    """One admission's ledger work (a user and a tier ledger, one update each) on a FileStore,
    outside any server: with an empty tier and with 2,000 jobs already active in it."""
    limits = quota.Quota(quota.Scope.USER, "u", 10**9, 10**9)
    tier = quota.Quota(quota.Scope.TIER, "t", 10**9, 10**9)
    with tempfile.TemporaryDirectory() as root:
        store = FileStore(root)
        for active in (0, 2000):
            while len(quota.active(store, tier)) < active:
                quota.admit(store, jobs.new_job_id(), [limits, tier], time.time())
            started = time.perf_counter()
            for _ in range(repeats):
                quota.admit(store, jobs.new_job_id(), [limits, tier], time.time())
            per_admit = (time.perf_counter() - started) / repeats * 1000
            label = f"ledger work per admission, {active} jobs active (no server)"
            bench.add(label, per_admit, "ms", repeats, "FileStore, one thread")


def _merge(
    runs: list[tuple[dict[str, int], list[float], float]],
) -> tuple[dict[str, int], list[float], float]:
    codes: dict[str, int] = {}
    latencies: list[float] = []
    for run_codes, run_latencies, _ in runs:
        for k, v in run_codes.items():
            codes[k] = codes.get(k, 0) + v
        latencies += run_latencies
    return codes, latencies, sum(elapsed for _, _, elapsed in runs)


def _poster(api: httpx.AsyncClient) -> Callable[[], Awaitable[str]]:
    async def post() -> str:
        r = await api.post("/v1/videos", json={"prompt": PROMPT, **SHORT})
        return str(r.status_code)

    return post


def _bare_starter(d: Driver, queue: str) -> Callable[[], Awaitable[str]]:
    async def start() -> str:
        await d.temporal.start_workflow(
            "BenchNothing", id=f"bench-{uuid.uuid4().hex}", task_queue=queue
        )
        return "ok"

    return start


def _job_starter(d: Driver, queue: str) -> Callable[[], Awaitable[str]]:
    """The start a POST makes (the job's input, memo and search attributes), on queues nobody
    polls: what the API adds on top of it is the difference to the POST figures, what the
    job's payload adds is the difference to the bare starts."""
    key = ApiKey("bench-ref", "benchref", "bench")

    async def start() -> str:
        req = c.VideoRequest(
            job_id=jobs.new_job_id(),
            user=key.user,
            tier=key.tier,
            prompt=PROMPT,
            model="videogen-tiny",
            seed=1,
            width=64,
            height=64,
            seconds=1,
            fps=8,
            num_frames=9,
            num_inference_steps=SHORT["num_inference_steps"],
            guidance_scale=5.0,
            gpu_task_queue=queue,
            cpu_task_queue=queue,
        )
        await jobs.start(d.temporal, req, key, TierPolicy(priority=3))
        return "ok"

    return start


# -- recovery after SIGTERM / SIGKILL ----------------------------------------------------------


def worker_log_events(stack: Stack, job_id: str) -> list[tuple[float, str, int]]:
    """(time, event, attempt) of the GPU workers' log lines about a job (JSON lines with an ISO
    UTC timestamp): the workers' side of a hand-over, which the history does not record for
    an attempt that was retried."""
    assert stack.log_dir is not None
    found = []
    for path in sorted(stack.log_dir.glob("gpu-worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if job_id not in line or not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
                at = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00"))
            except (ValueError, KeyError):
                continue
            if rec.get("job_id") == job_id:
                found.append((at.timestamp(), str(rec.get("event")), int(rec.get("attempt", 0))))
    return sorted(found)


def _step_at(progress: list[Progress], at: float) -> int:
    """The step an attempt had reached at `at`, extrapolated from its progress signals."""
    denoising = [p for p in progress if p.update.phase == c.Phase.DENOISING]
    if not denoising:
        return 0
    last = denoising[-1]
    if len(denoising) < 2 or at <= last.at:
        return last.update.step
    head = denoising[0]
    rate = (last.update.step - head.update.step) / max(last.at - head.at, 1e-6)
    return last.update.step + int(rate * (at - last.at))


def _first(events: list[tuple[float, str, int]], event: str, min_attempt: int = 1) -> float | None:
    return next((t for t, e, a in events if e == event and a >= min_attempt), None)


async def recovery(d: Driver, runs: int, bench: Benchmark) -> None:
    """Kill the GPU worker running a job mid-denoising while a standby worker idles; from the
    signal to the retried attempt's first step past the point it resumed from."""
    s: dict[str, list[float]] = {}
    stack = d.stack
    for i in range(runs * 2):
        sig = (signal.SIGTERM, signal.SIGKILL)[i % 2]
        name = sig.name
        await asyncio.to_thread(stack.wait_gpu_workers, 2, 120)
        await asyncio.sleep(0.5)
        job, _ = await d.submit({**RECOVERY_JOB, "seed": 3000 + i})
        reached = (await d.wait_step(job, KILL_AT_STEP))["step"]
        pid = await gpu_worker_pid(d.temporal, job)
        if pid is None:
            raise RuntimeError(f"{job}: no worker runs it")
        sent = time.time()
        os.kill(pid, sig)
        res = await d.result(job)
        v = await d.get(job)
        if res is None:
            raise RuntimeError(f"{job} did not complete after {name}: {v}")
        tl = await timeline(d.temporal, job)
        first = [p for p in tl.progress if p.update.attempt == 1]
        resumed_from = v["resumed_from_step"] or 0
        logged = worker_log_events(stack, job)
        # The retried attempt logs right after its first step (exact); without that line
        # (an older worker), its first progress signal past the resume step (up to 0.1 s late).
        resumed_at = _first(logged, RECOVERED_EVENT, 2) or next(
            (
                p.at
                for p in tl.progress
                if p.update.attempt >= 2
                and p.update.phase == c.Phase.DENOISING
                and p.update.step > resumed_from
            ),
            None,
        )
        if resumed_at is None:
            raise RuntimeError(f"{job}: no sign of a resumed step in the logs or the history")
        # Steps the killed attempt had done that the retry did again. At least: up to its last
        # progress signal (they come every 0.1 s). Estimated: that, plus its step rate times
        # the time from that signal to the kill.
        redone = max(0, max([p.update.step for p in first] + [reached]) - resumed_from)
        estimated = max(0, _step_at(first, sent) - resumed_from) if first else redone
        s.setdefault(f"{name} resumed", []).append(resumed_at - sent)
        for key, event, attempt in (
            ("handed over", "preempted: attempt handed over", 1),
            ("retry picked up", "generation started", 2),
            ("checkpoint restored", "resuming", 2),
        ):
            at = _first(logged, event, attempt)
            if at is not None:
                s.setdefault(f"{name} {key}", []).append(at - sent)
        s.setdefault(f"{name} lost", []).append(redone)
        s.setdefault(f"{name} lost estimated", []).append(estimated)
        s.setdefault(f"{name} wasted", []).append(v["wasted_steps"])
        print(
            f"    {name}: signal at step >= {reached}, resumed from step {resumed_from}, "
            f"first resumed step after {resumed_at - sent:.2f} s, wasted_steps "
            f"{v['wasted_steps']}, steps redone >= {redone} (~{estimated})",
            flush=True,
        )
        # The supervisor's part: bring the killed worker back (a SIGTERMed one exits itself
        # once it has handed over).
        for child in stack.children:
            if child.process and child.process.pid == pid:
                await asyncio.to_thread(child.process.wait, 60)
        stack.check()
    bench.config["job"] = (
        f"{RECOVERY_JOB['size']}, {RECOVERY_JOB['seconds']} s, "
        f"{RECOVERY_JOB['num_inference_steps']} steps"
    )
    bench.config["signal"] = (
        f"once the job reports step {KILL_AT_STEP} or later; SIGTERM and SIGKILL alternate"
    )
    cfg = ""
    for name in ("SIGTERM", "SIGKILL"):
        resumed = s.get(f"{name} resumed", [])
        if not resumed:
            continue
        n = len(resumed)
        bench.add(
            f"{name}: signal → first resumed step, median", statistics.median(resumed), "s", n, cfg
        )
        bench.add(f"{name}: signal → first resumed step, max", max(resumed), "s", n, cfg)
        for key, what in (
            ("handed over", "attempt handed over (worker log)"),
            ("retry picked up", "retry started on the standby (worker log)"),
            ("checkpoint restored", "checkpoint restored (worker log)"),
        ):
            if s.get(f"{name} {key}"):
                bench.add(
                    f"{name}: signal → {what}, median",
                    statistics.median(s[f"{name} {key}"]),
                    "s",
                    len(s[f"{name} {key}"]),
                    cfg,
                )
        est = s[f"{name} lost estimated"]
        bench.add(
            f"{name}: steps lost (redone by the retry, estimated), mean",
            statistics.mean(est),
            "steps",
            n,
            cfg,
        )
        bench.add(f"{name}: steps lost (estimated), max", max(est), "steps", n, cfg)
        bench.add(
            f"{name}: steps lost (at least), mean",
            statistics.mean(s[f"{name} lost"]),
            "steps",
            n,
            cfg,
        )
        bench.add(
            f"{name}: wasted_steps the API reports, mean",
            statistics.mean(s[f"{name} wasted"]),
            "steps",
            n,
            cfg,
        )
    bench.samples = s
