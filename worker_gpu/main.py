"""The GPU worker process: loads its model once, then runs one diffusion activity at a time.

It polls the task queue of the model it holds (warm-model routing), so a job only ever lands on
a worker that has that model in memory. SIGTERM/SIGINT shut it down gracefully.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog
from temporalio.worker import Worker

from activities import pipeline
from activities.diffusion import DiffusionActivities
from videogen.settings import Settings
from videogen.storage import open_store
from videogen.temporal import connect, run_until_stopped

log = structlog.get_logger(__name__)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    spec = settings.model_spec
    device = pipeline.pick_device()
    model = await asyncio.to_thread(pipeline.load_pipeline, spec, device)
    store = open_store(settings.resolved_storage_url)
    client = await connect(wait_s=60)
    queue = settings.gpu_task_queue(spec.name)
    worker = Worker(
        client,
        task_queue=queue,
        activities=[DiffusionActivities(model, store).generate_video],
        # One job per GPU: a second job would only slow both down and risk running out of memory.
        max_concurrent_activities=1,
        # Heartbeats carry progress and must reach the server promptly: the SDK's default
        # throttle (up to 30 s) delays cancellation and loses checkpoints on a crash.
        max_heartbeat_throttle_interval=timedelta(seconds=settings.heartbeat_throttle_s),
        default_heartbeat_throttle_interval=timedelta(seconds=settings.heartbeat_throttle_s),
        graceful_shutdown_timeout=timedelta(seconds=10),
    )
    log.info(
        "gpu worker ready",
        task_queue=queue,
        model=spec.name,
        device=device,
        load_seconds=round(model.load_seconds, 3),
        storage=store.describe(),
    )
    await run_until_stopped(worker, stop)

