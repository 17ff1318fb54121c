"""Shared fixtures: one real embedded stack (Temporal dev server, API, CPU and GPU workers as
child processes, exactly as `videogen up` runs them) for the whole test session."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import s3server
from helpers import api_client
from temporalio.client import Client

from videogen.devserver import free_port
from videogen.settings import DEV_API_KEY
from videogen.stack import Stack

# Fixtures that start services: a test that uses any of them (directly or through another
# fixture) is marked `stack` and left out of `make test-fast`.
SERVICE_FIXTURES = {"stack", "pstack", "s3_stack", "moto_s3"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


OTHER_KEY = "other-key"
# An internal-tier user only tests/test_observability.py submits as, so its metric deltas are
# its own; and the admin key of the session stack's /v1/admin endpoints.
OBS_KEY = "obs-key"
ADMIN_KEY = "admin-key"


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[s3server.S3Server]:
    """One real S3-protocol server (moto, HTTP on loopback) for the session; tests take a
    fresh bucket each."""
    with s3server.s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("stack")
    s = Stack(
        data_dir=data,
        api_port=free_port(),
        temporal_port=free_port(),
        ui_port=None,
        gpu_workers=1,
        log_dir=data / "logs",
        worker_metrics=True,
        env={
            "VIDEOGEN_API_KEYS": f"{DEV_API_KEY}:dev:paid,{OTHER_KEY}:other:free,"
            f"{OBS_KEY}:obs:internal",
            "VIDEOGEN_ADMIN_KEY": ADMIN_KEY,
            "VIDEOGEN_LOG_FORMAT": "json",
            # Tracing on, spans printed into each process's log (test_observability.py reads
            # them): the whole suite runs with the tracing interceptors in place.
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "VIDEOGEN_PROGRESS_INTERVAL_S": "0.1",
            "VIDEOGEN_EVENTS_POLL_S": "0.1",
            "VIDEOGEN_EVENTS_KEEPALIVE_S": "0.5",
            # The tests' webhook receivers listen on loopback; nothing else private is allowed.
            "VIDEOGEN_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "VIDEOGEN_TASK_QUEUE_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
            # The suite submits faster than the default limits allow a user; limits have
            # their own tests (test_scheduling.py).
            "VIDEOGEN_TIERS": json.dumps(
                {
                    "internal": {"priority": 1},
                    "paid": {"priority": 2, "user_per_minute": 1000},
                    "free": {"priority": 4, "user_per_minute": 1000},
                }
            ),
        },
    )
    try:
        s.start(timeout_s=180)
    except Exception:
        _dump_logs(data / "logs")
        raise
    yield s
    s.stop()
    if request.session.testsfailed:
        _dump_logs(data / "logs")  # the child processes' side of a failure


def _dump_logs(log_dir: Path) -> None:
    for f in sorted(log_dir.glob("*.log")):
        # Without the trace spans (one JSON object per line, starting with their name).
        lines = [
            ln
            for ln in f.read_text(errors="replace").splitlines()
            if not ln.startswith('{"name": ')
        ]
        print(f"----- {f.name} -----\n" + "\n".join(lines)[-4000:])


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with api_client(stack) as c:
        yield c


@pytest.fixture
def other_api(stack: Stack) -> Iterator[httpx.Client]:
    with api_client(stack, OTHER_KEY) as c:
        yield c


@pytest.fixture(scope="session")
def small_13b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Wan2.1 1.3B directory at the published widths, cut to 2 transformer blocks and 1
    text-encoder layer with a small vocabulary (1.8 GB), with random weights in 200 MB shards;
    shared by the tests that load one (tests/test_fake_wan.py, tests/test_wan_stack.py)."""
    from videogen import fake_wan

    out = tmp_path_factory.mktemp("wan-1.3b") / "model"
    fake_wan.build(
        "wan2.1-t2v-1.3b",
        out,
        layers=2,
        text_layers=1,
        vocab_size=fake_wan.SMALL_VOCAB_SIZE,
        # Small enough that the 2-block transformer (475 MB) is split like the published one.
        max_shard_size="200MB",
    )
    return out


@pytest_asyncio.fixture(scope="session")
async def stack_client(stack: Stack) -> AsyncIterator[Client]:
    """A Temporal client of the session stack, for tests that start workflows directly."""
    from videogen.temporal import connect

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{stack.temporal_port}")
        yield await connect(wait_s=10)
