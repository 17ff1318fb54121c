"""The embedded stack: Temporal dev server, API, CPU worker and GPU worker(s) as child processes.

Used by `videogen up` (foreground, Ctrl-C stops all), `videogen demo` and the integration tests,
so the tests exercise the very processes a user runs. Workers that die are restarted, as a
process supervisor in production would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from temporalio.api.enums.v1 import PendingActivityState, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from videogen import codec
from videogen import contracts as c
from videogen.devserver import DevServer, free_port, port_open
from videogen.settings import Settings


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    # Where the worker serves /metrics (VIDEOGEN_WORKER_METRICS_PORT); kept across restarts.
    metrics_port: int | None = None


@dataclass
class Stack:
    data_dir: Path
    api_port: int = 8000
    temporal_port: int = 7233
    ui_port: int | None = 8233
    gpu_workers: int = 1
    # Extra environment for every child (VIDEOGEN_* settings, AWS_* for s3://, ...).
    env: dict[str, str] = field(default_factory=dict)
    # None: children write to this process's stdout/stderr; else one log file each here.
    log_dir: Path | None = None
    persistent: bool = True
    # Give every worker its own /metrics port (Child.metrics_port).
    worker_metrics: bool = False
    server: DevServer | None = None
    children: list[Child] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def child_env(self) -> dict[str, str]:
        data_dir = self.data_dir.resolve()
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": f"127.0.0.1:{self.temporal_port}",
            "VIDEOGEN_DATA_DIR": str(data_dir),
            "VIDEOGEN_API_PORT": str(self.api_port),
            "PYTHONUNBUFFERED": "1",
        }
        env.setdefault("VIDEOGEN_STORAGE_URL", f"file://{data_dir / 'objects'}")
        if self.ui_port:  # the Web UI may call the codec endpoint, under either name of its host
            ui = [f"http://{host}:{self.ui_port}" for host in ("127.0.0.1", "localhost")]
            env.setdefault("VIDEOGEN_CODEC_CORS_ORIGINS", ",".join(ui))
        env.update(self.env)
        # The stack's own server, whatever `env` copied from a process environment (a whole
        # os.environ, say, with another stack's TEMPORAL_ADDRESS in it).
        env["TEMPORAL_ADDRESS"] = f"127.0.0.1:{self.temporal_port}"
        return env

    def start(self, timeout_s: float = 120.0) -> Stack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        if port_open("127.0.0.1", self.api_port):
            raise RuntimeError(
                f"port {self.api_port} is already in use; choose another "
                "(--api-port) or stop what runs there"
            )
        self.server = self.dev_server().start()
        cli = [sys.executable, "-m", "videogen.cli"]
        self.children = [Child("cpu-worker", [*cli, "worker", "cpu"])]
        self.children += [
            Child(f"gpu-worker-{i}", [*cli, "worker", "gpu"]) for i in range(self.gpu_workers)
        ]
        self.children.append(Child("api", [*cli, "api"]))
        # Each worker its own metrics port: from VIDEOGEN_WORKER_METRICS_PORT upwards if the
        # environment sets one (`videogen up`), else free ones when asked (tests).
        base = int(self.child_env().get("VIDEOGEN_WORKER_METRICS_PORT") or 0)
        workers = [ch for ch in self.children if ch.name != "api"]
        for i, child in enumerate(workers):
            if base:
                child.metrics_port = base + i
            elif self.worker_metrics:
                child.metrics_port = free_port()
        try:
            for child in self.children:
                self._spawn(child)
            self.wait_api(timeout_s)
            self.wait_gpu_workers(self.gpu_workers, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, child: Child) -> None:
        out: IO[bytes] | None = None
        if self.log_dir:
            out = open(self.log_dir / f"{child.name}.log", "ab")  # noqa: SIM115
        env = self.child_env()
        env.pop("VIDEOGEN_WORKER_METRICS_PORT", None)
        if child.metrics_port:
            env["VIDEOGEN_WORKER_METRICS_PORT"] = str(child.metrics_port)
        child.process = subprocess.Popen(
            child.argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def restart_api(self, timeout_s: float = 60.0) -> None:
        """Stop the API with SIGTERM, as a rollout does, and start it again on the same port."""
        child = self.child("api")
        assert child.process is not None, "the stack is not started"
        child.process.terminate()
        child.process.wait(timeout_s)
        child.restarts += 1
        self._spawn(child)
        self.wait_api(timeout_s)

    def wait_api(self, timeout_s: float) -> None:
        wait_ready(self.api_url, timeout_s, check=self.check)

    def wait_gpu_workers(self, n: int, timeout_s: float = 120.0) -> None:
        """Wait until `n` GPU worker processes (restarted ones included) poll their task queue.

        Judged from the workers themselves, as Temporal lists their pollers: a worker polls
        only once its model is loaded, and its identity (`pid@host`) names the very process.
        """
        queue = self.gpu_task_queue()
        deadline = time.monotonic() + timeout_s
        while True:
            self.check()
            alive = {
                ch.process.pid
                for ch in self.children
                if ch.name.startswith("gpu-worker")
                and ch.process is not None
                and ch.process.poll() is None
            }
            ready = len(alive & polling_pids(f"127.0.0.1:{self.temporal_port}", queue))
            if ready >= n:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{ready} of {n} GPU workers polling {queue!r} after {timeout_s}s"
                )
            time.sleep(0.2)

    def gpu_task_queue(self) -> str:
        """The queue the stack's GPU workers poll, from the settings their environment gives."""
        env = self.child_env()
        fields = (
            "task_queue_prefix",
            "model",
            "model_name",
            "models",
            "worker_model",
            "worker_pool",
        )
        settings = Settings(
            **{
                f: env[f"VIDEOGEN_{f.upper()}"]
                for f in fields  # type: ignore[arg-type]
                if f"VIDEOGEN_{f.upper()}" in env
            }
        )
        return settings.warm_queue(settings.served_model, settings.worker_pool)

    def dev_server(self) -> DevServer:
        return DevServer(
            db_file=self.data_dir / "temporal.db" if self.persistent else None,
            port=self.temporal_port,
            ui_port=self.ui_port,
            log_file=(self.log_dir or self.data_dir) / "temporal.log",
            # The Web UI shows payloads in the clear through the API's codec endpoint.
            extra_args=["--ui-codec-endpoint", f"{self.api_url}/codec"] if self.ui_port else [],
        )

    async def client(self) -> Client:
        """A Temporal client of this stack that reads its payloads (its VIDEOGEN_PAYLOAD_KEYS)."""
        keys = self.child_env().get(codec.SETTING, codec.DEV_PAYLOAD_KEYS)
        return await Client.connect(
            f"127.0.0.1:{self.temporal_port}",
            data_converter=codec.data_converter(codec.PayloadKeys.parse(keys)),
        )

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def check(self) -> None:
        """Restart a worker that died; the API and Temporal dying is fatal for the stack."""
        if self.server and self.server.process and self.server.process.poll() is not None:
            raise RuntimeError("the Temporal dev server exited")
        for child in self.children:
            if child.process is None or child.process.poll() is None:
                continue
            code = child.process.returncode
            if child.name == "api":
                raise RuntimeError(f"the API exited with code {code}")
            child.restarts += 1
            print(f"[videogen] {child.name} exited with code {code}; restarting", file=sys.stderr)
            self._spawn(child)

    def stop(self, timeout_s: float = 20.0) -> None:
        for child in reversed(self.children):
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        if self.server:
            self.server.stop()


def wait_ready(url: str, timeout_s: float, check: Callable[[], None] | None = None) -> None:
    """Wait until the API at `url` says it is ready (`/readyz` 200); `check` runs before each
    try (the stack's, to fail at once when a child died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check is not None:
            check()
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"API not ready at {url} after {timeout_s}s")


def polling_pids(address: str, queue: str) -> set[int]:
    """Pids of the processes Temporal lists as polling `queue` for activities (from their
    `pid@host` identities). Synchronous: it runs its own event loop in a thread, so it can be
    called from sync code and from inside a running loop alike."""

    async def ask() -> set[int]:
        client = await Client.connect(address)
        resp = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            )
        )
        pids = (p.identity.split("@", 1)[0] for p in resp.pollers)
        return {int(pid) for pid in pids if pid.isdigit()}

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, ask()).result()


async def gpu_worker_pid(client: Client, job_id: str) -> int | None:
    """Pid of the GPU worker process running the job's generate activity now (its Temporal
    identity is 'pid@host'); None if no attempt is running. For tests and benchmarks that
    interrupt that very worker."""
    desc = await client.get_workflow_handle(job_id).describe()
    for pa in desc.raw_description.pending_activities:
        if (
            pa.activity_type.name == c.ACTIVITY_GENERATE
            and pa.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            and pa.last_worker_identity
        ):
            return int(pa.last_worker_identity.split("@", 1)[0])
    return None
