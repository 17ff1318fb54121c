"""Helpers for tests that drive the API of a stack and interrupt its GPU workers."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from videogen import catalog
from videogen import contracts as c
from videogen.devserver import free_port
from videogen.settings import DEV_API_KEY, Settings
from videogen.stack import Stack

# Small enough for a 2-core CI machine: a job takes about a second.
SMALL = {"size": "64x64", "seconds": 1, "num_inference_steps": 3}

# Preemption tests' stacks: checkpoints every 4 steps, an ungraceful death noticed after 3 s.
HEARTBEAT_TIMEOUT_S = 3
EVERY_STEPS = 4
# Long enough to be interrupted several times, at the length the built-in model was trained at.
JOB = {
    "prompt": "a red square moving right",
    "size": "128x128",
    "seconds": 2,
    "num_inference_steps": 60,
}


def preemption_env(prefix: str) -> dict[str, str]:
    return {
        "VIDEOGEN_TASK_QUEUE_PREFIX": f"{prefix}-{uuid.uuid4().hex[:8]}",
        "VIDEOGEN_PROGRESS_INTERVAL_S": "0.1",
        "VIDEOGEN_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
        "VIDEOGEN_CHECKPOINT_POLICY": "steps",
        "VIDEOGEN_CHECKPOINT_EVERY_STEPS": str(EVERY_STEPS),
        "VIDEOGEN_GRACEFUL_SHUTDOWN_S": "30",
    }


def api_client(stack: Stack, key: str = DEV_API_KEY) -> httpx.Client:
    """An HTTP client for the stack's API, authenticated with `key`."""
    return httpx.Client(
        base_url=stack.api_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
    )


def submit(api: httpx.Client, **body: Any) -> dict[str, Any]:
    payload = {"prompt": "a lighthouse in a storm", **SMALL, **body}
    r = api.post("/v1/videos", json=payload)
    assert r.status_code == 200, r.text
    return r.json()


def get_video(api: httpx.Client, video_id: str, tries: int = 20) -> dict[str, Any]:
    """GET the job, as a client should: a 503 (the API's 1.5 s limit on a Temporal call, which
    a loaded 2-core machine can pass while GPU workers restart) is retried; anything else but
    200 fails the test with the answer."""
    for _ in range(tries):
        r = api.get(f"/v1/videos/{video_id}")
        if r.status_code != 503:
            break
        time.sleep(0.2)
    assert r.status_code == 200, f"GET {video_id}: {r.status_code} {r.text}"
    return r.json()  # type: ignore[no-any-return]


def wait_for(
    api: httpx.Client,
    video_id: str,
    statuses: tuple[str, ...] = ("completed", "failed", "cancelled"),
    timeout_s: float = 120,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = get_video(api, video_id)
        if v["status"] in statuses:
            return v
        time.sleep(0.1)
    raise AssertionError(f"{video_id} did not reach {statuses} in {timeout_s}s: {v}")


def reference_frames(body: dict[str, Any]) -> Any:
    """The frames an uninterrupted run of this request gives, computed in this process once."""
    key = json.dumps(body, sort_keys=True)
    if key not in _FRAMES:
        _FRAMES[key] = _generate(body)
    return _FRAMES[key]


_FRAMES: dict[str, Any] = {}


def generation_params(body: dict[str, Any]) -> Any:
    """The built-in model's GenerationParams for a request body, as the API would make them."""
    from activities import pipeline
    from videogen import catalog

    req = {"prompt": "a lighthouse in a storm", **SMALL, **body}
    spec = catalog.TINY_SPEC
    width, height = spec.generated_dims(req["size"])
    return pipeline.GenerationParams(
        prompt=req["prompt"],
        negative_prompt=req.get("negative_prompt", ""),
        seed=req["seed"],
        width=width,
        height=height,
        num_frames=spec.num_frames(int(req["seconds"])),
        num_inference_steps=req["num_inference_steps"],
        guidance_scale=spec.guidance_scale,
    )


def _generate(body: dict[str, Any]) -> Any:
    from activities import pipeline

    return pipeline.generate(_tiny_model(), generation_params(body))


def assert_reference_video(api: httpx.Client, job_id: str, body: dict[str, Any]) -> None:
    """The job made exactly the uninterrupted run's video: first the frames (generation), then
    the MP4 bytes (encoding), and the stored MP4 is the one its result names."""
    from activities import media
    from videogen import catalog

    frames = reference_frames(body)
    v = get_video(api, job_id)
    assert v["frames_sha256"] == media.frames_sha256(frames), (
        f"{job_id}: generated frames differ from the uninterrupted reference"
    )
    content = api.get(f"/v1/videos/{job_id}/content").content
    assert hashlib.sha256(content).hexdigest() == v["video_sha256"], (
        f"{job_id}: the stored MP4 is not the one the job's result names"
    )
    width, height = catalog.TINY_SPEC.parse_size(v["size"])
    scaled = media.scale_frames(frames, width, height)
    assert content == media.encode_mp4(scaled, catalog.TINY_SPEC.fps), (
        f"{job_id}: same frames, but the MP4 bytes differ from this process's encode"
    )


def wan_pipeline_frames(model: Any, params: Any, **extra: Any) -> Any:
    """What WanPipeline.__call__ makes of `params` on the loaded model's own components: the
    reference the worker's hand-written loop must equal, float32 (T, H, W, 3) in [0, 1]."""
    import torch

    return model.pipe(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        height=params.height,
        width=params.width,
        num_frames=params.num_frames,
        num_inference_steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        generator=torch.Generator().manual_seed(params.seed),
        output_type="np",
        max_sequence_length=model.spec.max_sequence_length,
        **extra,
    ).frames[0]


def assert_resumes_at_every_step(
    model: Any, params: Any, check: Callable[[int, Any], None] | None = None
) -> None:
    """A checkpoint taken after each step k (0 to the last), encoded, decoded, checked and
    restored, finishes with exactly the uninterrupted run's frames; `check(k, checkpoint)`
    may look at each decoded checkpoint first."""
    import numpy as np
    import torch

    from activities import checkpoint, pipeline

    reference = pipeline.generate(model, params)
    job = "video_resume_every_step"
    for k in range(params.num_inference_steps + 1):
        state = pipeline.prepare(model, params)
        while state.next_step < k:
            pipeline.denoise_step(model, state)
        snap = checkpoint.snapshot(state, job_id=job, attempt=1, device="cpu")
        data = checkpoint.encode(snap, model)
        ckpt = checkpoint.decode(data, hashlib.sha256(data).hexdigest())
        if check is not None:
            check(k, ckpt)
        checkpoint.check_compatible(
            ckpt, model, params, job_id=job, num_threads=torch.get_num_threads()
        )
        resumed = checkpoint.restore(model, ckpt, params)
        while not resumed.done:
            pipeline.denoise_step(model, resumed)
        assert np.array_equal(pipeline.decode(model, resumed), reference), f"resume at {k}"


_MODEL: list[Any] = []


def _tiny_model() -> Any:
    if not _MODEL:
        from activities import pipeline
        from videogen import catalog

        _MODEL.append(pipeline.load_pipeline(catalog.TINY_SPEC, "cpu"))
    return _MODEL[0]


def wait_step(api: httpx.Client, job_id: str, step: int, timeout_s: float = 60) -> dict[str, Any]:
    """Poll until the job's denoising has reached `step` (as its progress signals say)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = get_video(api, job_id)
        if v["phase"] == "denoising" and v["step"] >= step:
            return v
        assert v["status"] in ("queued", "in_progress"), v
        time.sleep(0.02)
    raise AssertionError(f"{job_id} did not reach step {step}")


def worker_child(stack: Stack, pid: int) -> Any:
    """The stack's child with this pid; None if it has died and been replaced since."""
    return next((ch for ch in stack.children if ch.process and ch.process.pid == pid), None)


def unit_request(**overrides: object) -> c.VideoRequest:
    """A small valid request for activity tests without a stack (job id `video_unit`)."""
    fields: dict[str, object] = dict(
        job_id="video_unit",
        user="u",
        tier="paid",
        prompt="a kite",
        model="videogen-tiny",
        seed=3,
        width=64,
        height=64,
        seconds=1,
        fps=8,
        num_frames=9,
        num_inference_steps=3,
        guidance_scale=5.0,
        gpu_task_queue="gpu",
        cpu_task_queue="cpu",
    )
    fields.update(overrides)
    return c.VideoRequest(**fields)  # type: ignore[arg-type]


def direct_request(stack: Stack, **overrides: object) -> c.VideoRequest:
    """A valid request for starting a workflow directly (not through the API) on the stack."""
    prefix = stack.child_env()["VIDEOGEN_TASK_QUEUE_PREFIX"]
    fields: dict[str, object] = dict(
        job_id=f"video_{uuid.uuid4().hex}",
        user="dev",
        prompt="direct start",
        seed=1,
        num_inference_steps=2,
        gpu_task_queue=stack.gpu_task_queue(),
        cpu_task_queue=f"{prefix}-cpu",
        progress_interval_s=0.1,
    )
    return unit_request(**{**fields, **overrides})


@contextmanager
def private_stack(
    tmp: pytest.TempPathFactory, name: str, env: dict[str, str], **options: Any
) -> Iterator[Stack]:
    """A stack of a test module's own: fresh ports, its own data directory and logs, no Web
    UI; stopped afterwards. `options` are further `Stack` fields (gpu_workers, ui_port, ...)."""
    data = tmp.mktemp(name)
    fields: dict[str, Any] = dict(
        data_dir=data,
        api_port=free_port(),
        temporal_port=free_port(),
        ui_port=None,
        log_dir=data / "logs",
        env=env,
    )
    stack = Stack(**{**fields, **options})
    stack.start(timeout_s=180)
    try:
        yield stack
    finally:
        stack.stop()


def gpu_worker_settings(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, name: str, **overrides: object
) -> Settings:
    """Settings for a GPU worker run in this process on its own queue, sharing the stack's
    Temporal, store and CPU worker."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{stack.temporal_port}")
    fields: dict[str, object] = dict(
        data_dir=stack.data_dir,
        storage_url=stack.child_env()["VIDEOGEN_STORAGE_URL"],
        task_queue_prefix=f"{name}-{uuid.uuid4().hex[:8]}",
        checkpoint_policy="steps",
        checkpoint_every_steps=1,
        heartbeat_timeout_s=10,
    )
    fields.update(overrides)
    return Settings(**fields)  # type: ignore[arg-type]


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """A Prometheus endpoint's samples by (name, labels)."""
    return parse_metrics(httpx.get(url, timeout=10).raise_for_status().text)


def parse_metrics(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


def gpu_metrics(stack: Stack) -> Samples:
    """The metrics of every live GPU worker of `stack` that serves them yet, summed."""
    out: Samples = {}
    for child in stack.children:
        if (
            child.name.startswith("gpu-worker")
            and child.metrics_port
            and child.process is not None
            and child.process.poll() is None
        ):
            try:
                samples = scrape(f"http://127.0.0.1:{child.metrics_port}/metrics")
            except httpx.ConnectError:
                continue  # restarted and still loading its model (it has counted nothing)
            for k, v in samples.items():
                out[k] = out.get(k, 0.0) + v
    return out


def tiny_variant(dst: Path) -> Path:
    """A copy of the built-in model with other weights (one byte of the transformer's last
    tensor changed): another version of it, as a fine-tune would be, at the same limits."""
    shutil.copytree(catalog.TINY_DIR, dst)
    weights = dst / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # the tensor data ends the file: its header stays valid
    weights.write_bytes(bytes(data))
    return dst


def activity_events(history: Any, activity: str, event_type: int) -> list[Any]:
    """The history's events of `event_type` (an `EventType`) that belong to activity
    `activity`: its scheduled events themselves, or the started/completed/... events of them."""
    from temporalio.api.enums.v1 import EventType

    scheduled = [
        e
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == activity
    ]
    if event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
        return scheduled
    ids = {e.event_id for e in scheduled}
    attrs = {
        EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: "activity_task_started_event_attributes",
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    }[event_type]
    return [
        e
        for e in history.events
        if e.event_type == event_type and getattr(e, attrs).scheduled_event_id in ids
    ]
