"""The CPU worker process: runs `VideoGeneration` workflows and the CPU activities.

Encoding, thumbnails and cleanup never occupy a GPU; this process scales independently of the
GPU fleet. SIGTERM/SIGINT shut it down gracefully.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import structlog
from temporalio.worker import Worker

from activities.postprocess import PostprocessActivities
from activities.preemption import PreemptionActivities
from activities.webhooks import WebhookActivities
from videogen import metrics
from videogen.settings import Settings
from videogen.storage import open_store
from videogen.temporal import connect, refuse_development_secrets, run_until_stopped
from workflows.notify import VideoRetention, WebhookDelivery
from workflows.video import VideoGeneration

log = structlog.get_logger(__name__)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    # It signs webhooks and reads jobs' payloads: public development keys would let anyone
    # forge the one and read the other.
    refuse_development_secrets(
        [p for p in settings.development_secrets() if "WEBHOOK_SECRET" in p or "PAYLOAD" in p]
    )
    store = open_store(settings.resolved_storage_url)
    client = await connect(wait_s=60, keys=settings.payload_keyring)
    acts = PostprocessActivities(store)
    hooks = WebhookActivities(settings.webhook_secret_key, allowed_hosts=settings.webhook_hosts)
    room = PreemptionActivities(client)
    worker = Worker(
        client,
        task_queue=settings.cpu_task_queue,
        workflows=[VideoGeneration, WebhookDelivery, VideoRetention],
        activities=[acts.encode_video, acts.cleanup_job, hooks.deliver_webhook, room.make_room],
        # Encoding is CPU-bound (x264 on one thread each): more at once than cores only adds
        # latency to every job.
        max_concurrent_activities=os.cpu_count() or 1,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )
    if settings.worker_metrics_port:
        # Job outcomes (videogen_jobs_total) and the SDK's workflow metrics.
        metrics.serve(settings.worker_metrics_port, settings.worker_metrics_host)
    log.info(
        "cpu worker ready",
        task_queue=settings.cpu_task_queue,
        storage=store.describe(),
        metrics_port=settings.worker_metrics_port or None,
    )
    await run_until_stopped(worker, stop)
