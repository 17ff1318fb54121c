"""Observability on the real session stack: metrics scraped from the API and from each worker
after a job, the job's log lines and its trace, and the admin fleet endpoint.

The job is submitted as the `obs` user of the `internal` tier, which no other test uses, so
the per-tier series below move by exactly this test's job.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ADMIN_KEY, OBS_KEY
from fastapi.testclient import TestClient
from helpers import (
    Samples,
    api_client,
    direct_request,
    names,
    parse_metrics,
    scrape,
    submit,
    value,
    wait_for,
)
from temporalio.client import Client

from api import jobs
from api.app import create_app
from videogen.settings import ApiKey, Settings, TierPolicy
from videogen.stack import Stack
from videogen.temporal import connect

PROMPT = f"an observable heron {uuid.uuid4().hex[:6]}"


def worker_url(stack: Stack, name: str) -> str:
    port = stack.child(name).metrics_port
    assert port, f"{name} has no metrics port"
    return f"http://127.0.0.1:{port}/metrics"


def log_records(stack: Stack, name: str) -> list[dict[str, Any]]:
    assert stack.log_dir is not None
    out = []
    for line in (stack.log_dir / f"{name}.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


@pytest.fixture(scope="module")
def observed_job(stack: Stack) -> Iterator[tuple[dict[str, Any], dict[str, Samples]]]:
    """One completed job, and every process's metrics before it."""
    before = {
        "api": scrape(f"{stack.api_url}/metrics"),
        "gpu": scrape(worker_url(stack, "gpu-worker-0")),
        "cpu": scrape(worker_url(stack, "cpu-worker")),
    }
    with api_client(stack, OBS_KEY) as api:
        video = submit(api, prompt=PROMPT)
        done = wait_for(api, video["id"])
    assert done["status"] == "completed", done
    yield done, before


def test_metrics_of_the_api_and_each_worker_count_the_job(
    stack: Stack, observed_job: tuple[dict[str, Any], dict[str, Samples]]
) -> None:
    job, before = observed_job
    api = scrape(f"{stack.api_url}/metrics")
    assert (
        value(api, "videogen_jobs_submitted_total", tier="internal")
        - value(before["api"], "videogen_jobs_submitted_total", tier="internal")
        == 1
    )
    assert value(api, "videogen_api_requests_total", route="/v1/videos", method="POST") >= 1
    # The fleet gauges, and the Temporal SDK's own metrics through the same endpoint.
    assert {
        "videogen_queue_depth",
        "videogen_running_jobs",
        "videogen_workers_polling",
        "videogen_estimated_drain_time_seconds",
    } <= names(api)
    assert value(api, "temporal_request_total", operation="StartWorkflowExecution") >= 1

    gpu = scrape(worker_url(stack, "gpu-worker-0"))
    gen = [(lab, v) for (n, lab), v in gpu.items() if n == "videogen_generation_seconds_sum"]
    assert gen and all(v > 0 for _, v in gen)
    wait = value(gpu, "videogen_queue_wait_seconds_count", tier="internal") - value(
        before["gpu"], "videogen_queue_wait_seconds_count", tier="internal"
    )
    assert wait == 1
    assert value(gpu, "videogen_queue_wait_seconds_sum", tier="internal") >= 0
    assert value(gpu, "videogen_model_load_seconds_count") == 1
    assert value(gpu, "videogen_model_load_seconds_sum") > 0
    util = [v for (n, _), v in gpu.items() if n == "videogen_gpu_utilization"]
    assert len(util) == 1 and 0 < util[0] <= 1  # it just ran a job (share of the last 60 s)
    assert {
        "videogen_checkpoint_duration_seconds_count",
        "videogen_preemptions_total",
        "videogen_lease_expirations_total",
        "videogen_wasted_gpu_seconds_total",
        "videogen_preemption_recovery_seconds_count",
    } <= names(gpu)
    assert (
        value(
            gpu, "temporal_activity_execution_latency_seconds_count", activity_type="generate_video"
        )
        >= 1
    )

    cpu = scrape(worker_url(stack, "cpu-worker"))
    done = value(cpu, "videogen_jobs_total", outcome="completed", tier="internal") - value(
        before["cpu"], "videogen_jobs_total", outcome="completed", tier="internal"
    )
    assert done == 1
    assert value(cpu, "temporal_workflow_completed_total", workflow_type="VideoGeneration") >= 1
    assert job["id"]


def test_every_log_line_of_the_job_carries_its_workflow_id(
    stack: Stack, observed_job: tuple[dict[str, Any], dict[str, Samples]]
) -> None:
    job, _ = observed_job
    job_id = job["id"]
    time.sleep(0.5)  # the workers' last lines of the job
    seen: dict[str, list[str]] = {}
    for proc in ("gpu-worker-0", "cpu-worker"):
        for rec in log_records(stack, proc):
            if "context" in rec and "trace_id" in rec.get("context", {}):
                continue  # a span, not a log line
            if job_id not in json.dumps(rec):
                continue
            # The job's own workflow, or a child it started (`<job id>-retention`, ...).
            assert str(rec.get("workflow_id", "")).startswith(job_id), (proc, rec)
            assert rec.get("run_id"), (proc, rec)
            assert rec.get("worker_id"), (proc, rec)
            seen.setdefault(proc, []).append(rec["event"])
            # Prompts are user data: never in the logs at info level.
            assert PROMPT not in json.dumps(rec), rec
    gpu, cpu = seen.get("gpu-worker-0", []), seen.get("cpu-worker", [])
    assert {"generation started", "generation finished"} <= set(gpu), gpu
    assert {"job started", "video encoded", "job completed"} <= set(cpu), cpu
    # The model too, on every line of the job's own work (the SDK's lines aside).
    for proc in ("gpu-worker-0", "cpu-worker"):
        assert all(
            rec.get("model") == job["model"]
            for rec in log_records(stack, proc)
            if rec.get("workflow_id") == job_id and "logger" not in rec
        ), proc


def test_one_trace_from_the_http_request_through_every_activity(
    stack: Stack, observed_job: tuple[dict[str, Any], dict[str, Samples]]
) -> None:
    job, _ = observed_job
    job_id = job["id"]
    deadline = time.monotonic() + 10
    while True:
        spans = [
            rec
            for proc in ("api", "cpu-worker", "gpu-worker-0")
            for rec in log_records(stack, proc)
            if "trace_id" in rec.get("context", {})
        ]
        start = [
            s
            for s in spans
            if s["name"] == "StartWorkflow:VideoGeneration"
            and s["attributes"].get("temporalWorkflowID") == job_id
        ]
        trace = start[0]["context"]["trace_id"] if start else None
        ours = {s["name"] for s in spans if s["context"]["trace_id"] == trace}
        wanted = {
            "POST /v1/videos",
            "StartWorkflow:VideoGeneration",
            "RunWorkflow:VideoGeneration",
            "StartActivity:generate_video",
            "RunActivity:generate_video",
            "RunActivity:encode_video",
        }
        if trace and wanted <= ours:
            break
        assert time.monotonic() < deadline, f"spans of {job_id}'s trace: {sorted(ours)}"
        time.sleep(0.3)


# --- the admin fleet endpoint ------------------------------------------------------------------


@pytest.fixture
def pool_app(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, Settings]]:
    """An API replica whose `vip` tier has a dedicated GPU pool that no worker serves."""
    tiers = {"paid": TierPolicy(priority=2), "vip": TierPolicy(priority=1, dedicated_pool=True)}
    settings = Settings(
        task_queue_prefix=stack.env["VIDEOGEN_TASK_QUEUE_PREFIX"],
        api_keys="vip-key:vipuser:vip",
        tiers=tiers,
        admin_key="fleet-admin",
        data_dir=stack.data_dir,
        fleet_cache_s=0,
    )
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{stack.temporal_port}")
    with TestClient(create_app(settings)) as client:
        yield client, settings


async def test_admin_fleet_reports_the_backlog_of_a_queue_without_workers(
    stack: Stack, pool_app: tuple[TestClient, Settings]
) -> None:
    client, settings = pool_app
    temporal: Client = await connect(wait_s=10)
    queue = settings.warm_queue(settings.served_model, "vip")
    ids = []
    for _ in range(2):
        req = direct_request(stack, gpu_task_queue=queue, tier="vip", user="vipuser")
        await jobs.start(temporal, req, ApiKey("vip-key", "vipuser", "vip"), settings.tiers["vip"])
        ids.append(req.job_id)
    admin = {"Authorization": "Bearer fleet-admin"}
    try:
        # Temporal's task-queue stats lag by about 5 s: poll, allowing for that.
        deadline = time.monotonic() + 30
        while True:
            body = client.get("/v1/admin/fleet", headers=admin).json()
            pool = next(q for q in body["queues"] if q["queue"] == queue)
            vip = next(t for t in pool["tiers"] if t["tier"] == "vip")
            if vip["backlog"] == 2:
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.5)
        assert pool["pool"] == "vip" and pool["workers_polling"] == 0
        assert pool["backlog"] == 2 and pool["running"] == 0
        assert vip["estimated_drain_time_s"] == "inf"  # a backlog and no worker to drain it
        shared = next(q for q in body["queues"] if q["pool"] == "shared")
        assert shared["workers_polling"] >= 1  # the session stack's GPU worker

        metrics = parse_metrics(client.get("/metrics").text)
        assert value(metrics, "videogen_queue_depth", queue=queue, tier="vip") == 2
        assert math.isinf(
            value(metrics, "videogen_estimated_drain_time_seconds", queue=queue, tier="vip")
        )
        assert value(metrics, "videogen_workers_polling", queue=queue) == 0
    finally:
        for job_id in ids:
            await temporal.get_workflow_handle(job_id).terminate("test over")


def test_admin_endpoints_need_the_admin_key(pool_app: tuple[TestClient, Settings]) -> None:
    client, _ = pool_app
    r = client.get("/v1/admin/fleet")
    assert r.status_code == 401 and "admin key" in r.json()["error"]["message"]
    r = client.get("/v1/admin/fleet", headers={"Authorization": "Bearer vip-key"})
    assert r.status_code == 403 and "VIDEOGEN_ADMIN_KEY" in r.json()["error"]["message"]
    client.app.state.settings.admin_key = ""  # type: ignore[attr-defined]
    r = client.get("/v1/admin/fleet", headers={"Authorization": "Bearer fleet-admin"})
    assert r.status_code == 404 and "VIDEOGEN_ADMIN_KEY" in r.json()["error"]["message"]


def test_session_stack_admin_key(stack: Stack) -> None:
    r = httpx.get(
        f"{stack.api_url}/v1/admin/fleet",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert r.status_code == 200
    assert any(q["workers_polling"] >= 1 for q in r.json()["queues"])


def test_fleet_gauges_are_dropped_while_temporal_cannot_be_read(
    pool_app: tuple[TestClient, Settings],
) -> None:
    client, _ = pool_app
    assert "videogen_workers_polling" in names(parse_metrics(client.get("/metrics").text))

    class Unreadable:
        async def get(self, *_: object) -> None:
            raise ConnectionError("temporal unreachable")

    client.app.state.fleet = Unreadable()  # type: ignore[attr-defined]
    r = client.get("/metrics")
    assert r.status_code == 200  # the scrape still answers, with the process's own metrics
    left = names(parse_metrics(r.text))
    assert "videogen_api_requests_total" in left
    assert not left & {
        "videogen_queue_depth",
        "videogen_workers_polling",
        "videogen_estimated_drain_time_seconds",
    }
