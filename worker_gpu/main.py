"""The GPU worker process: loads its model once, then runs one diffusion activity at a time.

It polls the task queue of the model it holds (warm-model routing), so a job only ever lands on
a worker that has that model in memory.

Shutdown is a preemption: SIGTERM, SIGINT or a spot interruption notice make the running
activity checkpoint at the next step boundary and hand the job over (a retryable failure that
another worker resumes at once); then the process exits 0. A poisoned state (NaN/Inf) makes it
exit with EXIT_POISONED so its supervisor restarts it with a freshly loaded model.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog
import torch
from temporalio.client import Client
from temporalio.worker import FixedSizeSlotSupplier, Worker, WorkerTuner

from activities import pipeline
from activities.checkpoint import CheckpointPolicy
from activities.diffusion import DiffusionActivities
from activities.placement import Placement
from videogen import logs, metrics
from videogen.settings import Settings
from videogen.storage import open_store
from videogen.temporal import connect, refuse_development_secrets, stop_on_signals
from worker_gpu import spot
from worker_gpu.models import Held, IdleOnly, ModelHost

log = structlog.get_logger(__name__)

EXIT_POISONED = 3


def configure_torch(settings: Settings, device: str) -> None:
    """Make a resumed run compute the same bits as an uninterrupted one."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if device.startswith("cuda"):
        # Deterministic kernels (docs/checkpoints.md, "What resumable denoising needs"; not
        # measured on a GPU here). cuBLAS reads its workspace setting when CUDA initialises,
        # so set it before the model moves there.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def policy_from(settings: Settings) -> CheckpointPolicy:
    return CheckpointPolicy(
        mode=settings.checkpoint_policy,
        every_steps=settings.checkpoint_every_steps,
        every_s=settings.checkpoint_every_s,
        mtbf_s=settings.preemption_mtbf_s,
    )


async def run(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Serve until stopped; the process exit code (0, or EXIT_POISONED)."""
    stop = stop or asyncio.Event()
    # It reads jobs' payloads (prompts): the public development key would let anyone else too.
    refuse_development_secrets([p for p in settings.development_secrets() if "PAYLOAD" in p])
    spec = settings.model_spec
    device = pipeline.pick_device()
    configure_torch(settings, device)
    placement = Placement(settings.text_encoder, settings.offload_experts)
    model = await asyncio.to_thread(pipeline.load_pipeline, spec, device, placement)
    store = open_store(settings.resolved_storage_url)
    client = await connect(wait_s=60, keys=settings.payload_keyring)
    served = settings.served_model
    model.version = served.version
    queue = settings.warm_queue(served, settings.worker_pool)
    exit_code = 0

    def on_poisoned() -> None:
        nonlocal exit_code
        exit_code = EXIT_POISONED
        stop.set()

    policy = policy_from(settings)
    acts = DiffusionActivities(
        model,
        store,
        policy=policy,
        checkpoint_retries=settings.checkpoint_retries,
        checkpoint_backoff_s=settings.checkpoint_backoff_s,
        on_poisoned=on_poisoned,
        region=settings.region,
    )
    host = ModelHost(
        acts,
        Held(served, model),
        catalog=settings.registry,
        queue_of=lambda m: settings.warm_queue(m, settings.worker_pool),
        device=device,
        placement=placement,
        keep=settings.worker_models_kept,
    )
    swaps = settings.worker_swaps and len(settings.registry.models) > 1
    metrics.configure_gpu(
        worker=logs.worker_id(),
        gpu_id=_gpu_id(device),
        region=settings.region,
        utilization=_nvml_utilization(device),
    )
    if settings.worker_metrics_port:
        # Started once the model is loaded: a scrape (or a probe) answering means "ready".
        metrics.serve(settings.worker_metrics_port, settings.worker_metrics_host)
    watcher = None
    if settings.spot_notice_url:
        watcher = asyncio.create_task(_watch_spot(settings, stop))
    metrics.MODEL_LOAD_SECONDS.observe(model.load_seconds)
    acts.ready_at = datetime.now(UTC)
    log.info(
        "gpu worker ready",
        task_queue=queue,
        cold_queue=settings.cold_queue(settings.worker_pool) if swaps else None,
        pool=settings.worker_pool or "shared",
        model=spec.name,
        version=served.short_version,
        device=device,
        placement=placement.describe(),
        torch_threads=torch.get_num_threads(),
        load_seconds=round(model.load_seconds, 3),
        storage=store.describe(),
        checkpoint_policy=policy.describe(),
        spot_notice_url=settings.spot_notice_url or None,
    )
    try:
        with stop_on_signals(stop):
            async with contextlib.AsyncExitStack() as running:
                if swaps:
                    await running.enter_async_context(_cold_worker(client, settings, host))
                await host.serve(lambda q: _warm_worker(client, settings, acts, q), stop)
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
    log.info("gpu worker stopped", exit_code=exit_code)
    return exit_code


def _warm_worker(
    client: Client, settings: Settings, acts: DiffusionActivities, queue: str
) -> Worker:
    return Worker(
        client,
        task_queue=queue,
        activities=[acts.generate_video],
        # One job per GPU: a second job would only slow both down and risk running out of memory.
        max_concurrent_activities=1,
        # Heartbeats carry checkpoints and must reach the server promptly: the SDK's default
        # throttle (up to 30 s) loses checkpoints on a crash and delays cancellation (measured:
        # docs/architecture.md, "Temporal facts measured here").
        max_heartbeat_throttle_interval=timedelta(seconds=settings.heartbeat_throttle_s),
        default_heartbeat_throttle_interval=timedelta(seconds=settings.heartbeat_throttle_s),
        # Covers the running step plus one checkpoint write; the activity hands over at once.
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_s),
    )


def _cold_worker(client: Client, settings: Settings, host: ModelHost) -> Worker:
    """The cold queue's poller: warm-ups only, one at a time, only while the worker is idle."""
    one = FixedSizeSlotSupplier(1)
    return Worker(
        client,
        task_queue=settings.cold_queue(settings.worker_pool),
        activities=[host.warm_up],
        tuner=WorkerTuner.create_composite(
            workflow_supplier=one,
            activity_supplier=IdleOnly(host.idle),
            local_activity_supplier=one,
            nexus_supplier=one,
        ),
        max_heartbeat_throttle_interval=timedelta(seconds=settings.heartbeat_throttle_s),
        default_heartbeat_throttle_interval=timedelta(seconds=settings.heartbeat_throttle_s),
    )


def _nvml_utilization(device: str) -> Callable[[], float] | None:
    """The GPU's own utilization (NVML, through torch) if it can be read, else None."""
    if not device.startswith("cuda"):
        return None
    index = int(_gpu_id(device))
    try:
        torch.cuda.utilization(index)
    except Exception as err:
        log.warning(
            "GPU utilization unreadable (install the `gpu` extra for NVML): "
            "reporting the share of time busy with a job instead",
            error=f"{type(err).__name__}: {err}",
        )
        return None
    return lambda: torch.cuda.utilization(index) / 100.0


def _gpu_id(device: str) -> str:
    """`0` for cuda:0 (cuda alone is device 0), else the device kind (cpu, mps)."""
    kind, _, index = device.partition(":")
    return (index or "0") if kind == "cuda" else kind


async def _watch_spot(settings: Settings, stop: asyncio.Event) -> None:
    notice = await spot.wait_for_notice(
        settings.spot_notice_url, poll_s=settings.spot_notice_poll_s
    )
    log.warning(
        "spot interruption: handing over the running job and stopping",
        action=notice.get("action"),
        time=notice.get("time"),
    )
    stop.set()
