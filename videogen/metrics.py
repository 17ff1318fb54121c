"""Prometheus metrics of the GPU worker: checkpoints, resumes, preemptions and their cost.

The GPU worker serves them on `VIDEOGEN_WORKER_METRICS_PORT` when it is set. Names follow the
design document's monitoring section (`videogen_checkpoint_duration_seconds`, wasted work).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

CHECKPOINT_SECONDS = Histogram(
    "videogen_checkpoint_duration_seconds",
    "Time to take, serialise and upload one checkpoint (growing: the store may be throttled).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CHECKPOINT_BYTES = Histogram(
    "videogen_checkpoint_bytes", "Size of one checkpoint file.",
    buckets=(1e5, 1e6, 1e7, 5e7, 1e8, 5e8, 1e9),
)
CHECKPOINT_FAILURES = Counter(
    "videogen_checkpoint_failures_total",
    "Checkpoints given up after retries (the job went on without them).",
)
RESUMES = Counter(
    "videogen_resumes_total",
    "Retried GPU attempts by where they started: heartbeat, previous, listing or scratch.",
    ["source"],
)
PREEMPTIONS = Counter(
    "videogen_preemptions_total",
    "GPU attempts this worker ended early: graceful (SIGTERM/spot notice) or poisoned (NaN).",
    ["kind"],
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
MODEL_LOAD_SECONDS = Histogram(
    "videogen_model_load_seconds", "Time a GPU worker took to load its model.",
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 120, 300),
)
