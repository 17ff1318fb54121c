"""Prometheus metrics of the workers: jobs, checkpoints, resumes, preemptions, their cost.

Each worker serves them, with the Temporal SDK's own metrics (videogen.sdk_metrics), on
`VIDEOGEN_WORKER_METRICS_PORT` when it is set. Names and labels follow the metric names of the
product requirements; docs/operations.md ("Metrics") restates those and lists them all. The
API's own (queue depth, drain time, requests) are in api/fleet.py and api/app.py.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Seconds-scale buckets for job-length things (queue waits, generation, recovery).
JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)

CHECKPOINT_SECONDS = Histogram(
    "videogen_checkpoint_duration_seconds",
    "Time to take, serialise and upload one checkpoint (growing: the store may be throttled).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CHECKPOINT_BYTES = Histogram(
    "videogen_checkpoint_bytes",
    "Size of one checkpoint file.",
    buckets=(1e5, 1e6, 1e7, 5e7, 1e8, 5e8, 1e9),
)
CHECKPOINT_FAILURES = Counter(
    "videogen_checkpoint_failures_total",
    "Checkpoints given up after retries (the job went on without them).",
)
RESUMES = Counter(
    "videogen_resumes_total",
    "Retried GPU attempts by where they started: heartbeat, previous, listing, scratch, or an "
    "earlier attempt's finished frames (frames).",
    ["source"],
)
PREEMPTIONS = Counter(
    "videogen_preemptions_total",
    "GPU attempts ended early: graceful (SIGTERM/spot notice), yielded (to a higher-priority "
    "job) or poisoned (NaN), by the "
    "region of the worker that lost the job; counted by the worker that resumes it.",
    ["kind", "region"],
)
YIELD_REQUESTS = Counter(
    "videogen_yield_requests_total",
    "Requests of jobs that waited past their tier's max_wait_s for a lower-priority job to "
    "yield its GPU, by outcome: accepted, refused (every candidate refused) or none (no "
    "lower-priority job running); counted by the CPU worker.",
    ["outcome"],
)
PREEMPTION_RECOVERY_SECONDS = Histogram(
    "videogen_preemption_recovery_seconds",
    "From an interrupted attempt's last heartbeat to the first step of the attempt that "
    "resumed it (SLO: < 60 s). Includes the heartbeat timeout after an ungraceful death.",
    buckets=JOB_BUCKETS,
)
LEASE_EXPIRATIONS = Counter(
    "videogen_lease_expirations_total",
    "GPU attempts that ended by heartbeat timeout (an ungraceful death: OOM kill, crash, "
    "partition), counted by the worker that picks the job up again.",
)
WASTED_GPU_SECONDS = Counter(
    "videogen_wasted_gpu_seconds_total",
    "GPU time lost to interruptions: steps computed but not in the checkpoint a retry resumed "
    "from, times this worker's step time.",
)
GPU_UTILIZATION = Gauge(
    "videogen_gpu_utilization",
    "Share of the last minute this worker's GPU spent computing a job (0-1).",
    ["worker", "gpu_id"],
)
GENERATION_SECONDS = Histogram(
    "videogen_generation_seconds",
    "GPU time of a finished generation attempt (model, model@version, resolution).",
    ["model", "model_version", "resolution"],
    buckets=JOB_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "videogen_queue_wait_seconds",
    "From submission to the first GPU attempt's start, by tier: the wait users feel most.",
    ["tier"],
    buckets=JOB_BUCKETS,
)
WASTED_STEPS = Counter(
    "videogen_wasted_steps_total",
    "Denoising steps computed by an earlier attempt and lost (not in its last checkpoint).",
)
JOBS_STARTED = Counter(
    "videogen_gpu_jobs_started_total",
    "GPU attempts started, by whether the worker was warm (model loaded before the job was "
    "scheduled) or the job waited for a cold start.",
    ["warm"],
)
COLD_STARTS = Counter(
    "videogen_cold_starts_total",
    "Model switches of a GPU worker for a job no warm worker took in time, by the model "
    "switched to (model@version).",
    ["model_version"],
)
MODEL_LOAD_SECONDS = Histogram(
    "videogen_model_load_seconds",
    "Time a GPU worker took to load its model.",
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 120, 300),
)


class BusyTracker:
    """How much of the last `window_s` seconds a worker spent computing (its GPU utilization
    as far as this process can tell: one job at a time, so busy = the GPU in use)."""

    def __init__(
        self,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._spans: deque[tuple[float, float]] = deque()
        self._since: float | None = None

    def begin(self) -> None:
        with self._lock:
            self._since = self._clock()

    def end(self) -> None:
        with self._lock:
            if self._since is not None:
                self._spans.append((self._since, self._clock()))
                self._since = None

    def fraction(self) -> float:
        with self._lock:
            now = self._clock()
            start = now - self.window_s
            while self._spans and self._spans[0][1] <= start:
                self._spans.popleft()
            busy = sum(min(b, now) - max(a, start) for a, b in self._spans if b > start)
            if self._since is not None:
                busy += now - max(self._since, start)
            return max(0.0, min(1.0, busy / self.window_s))


BUSY = BusyTracker()


def configure_gpu(
    *, worker: str, gpu_id: str, region: str, utilization: Callable[[], float] | None = None
) -> None:
    """Label this process's GPU series (one GPU worker process per GPU). `utilization`: the
    device's own reading (NVML) where there is one, else the share of time busy with a job."""
    # Series exist from the start at 0, so rate() and increase() see the first preemption.
    for kind in ("graceful", "yielded", "poisoned"):
        PREEMPTIONS.labels(kind, region)
    GPU_UTILIZATION.labels(worker, gpu_id).set_function(utilization or BUSY.fraction)


def serve(port: int, host: str) -> None:
    """Serve this process's registry (videogen's metrics and the SDK's) on host:port."""
    start_http_server(port, addr=host)
