"""The API through outages, on a private stack (s3:// behind a cuttable TCP proxy):

- the object store cut: reads of a completed video answer 503 with Retry-After, readiness names
  the store, and all is 200 again once it is back;
- Temporal hung (SIGSTOP) for a moment, then stopped for 30 s mid-job and started again on the
  same database: every endpoint answers 503 with Retry-After within about 2 s, an open event
  stream ends with a `retry:` hint, and afterwards the same API process answers 200 and the job
  completes;
- SIGTERM to the API with an open event stream of a queued job: the stream ends with a retry
  hint and the process exits within seconds.

The tests run in this order on one stack; the last one stops the API.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import s3server
from faultproxy import FaultProxy
from helpers import api_client, preemption_env, private_stack, submit, wait_for

from videogen.devserver import free_port
from videogen.settings import DEV_API_KEY
from videogen.stack import Stack

# The fault tier; each test's time budget (the first one also starts the stack).
pytestmark = [pytest.mark.stack, pytest.mark.fault, pytest.mark.timeout(240)]

# A user of a tier with its own GPU pool, which no worker of this stack serves: its jobs wait.
QUEUED_KEY = "queued-key"
OUTAGE_S = 30
# What "within about 2 s" is asserted as, with room for a loaded 2-core machine.
BOUND_S = 3.0
# Long enough to be mid-denoising when Temporal stops (~25 ms a step at 128x128 here).
LONG_JOB = {"size": "128x128", "seconds": 1, "num_inference_steps": 200}


@pytest.fixture(scope="module")
def outage(
    tmp_path_factory: pytest.TempPathFactory, moto_s3: s3server.S3Server
) -> Iterator[tuple[Stack, FaultProxy]]:
    bucket = moto_s3.create_bucket()
    host, _, port = moto_s3.endpoint_url.removeprefix("http://").partition(":")
    with FaultProxy((host, int(port))) as proxy:
        env = moto_s3.subprocess_env()
        env.update(preemption_env("outage"))
        env.update(
            {
                "AWS_ENDPOINT_URL": f"http://{proxy.address}",
                "VIDEOGEN_STORAGE_URL": f"s3://{bucket}/videogen",
                "VIDEOGEN_API_KEYS": f"{DEV_API_KEY}:dev:paid,{QUEUED_KEY}:vip:vip",
                "VIDEOGEN_TIERS": json.dumps(
                    {
                        "paid": {"priority": 2, "user_per_minute": 1000},
                        "vip": {"priority": 1, "dedicated_pool": True},
                    }
                ),
                "VIDEOGEN_EVENTS_POLL_S": "0.1",
                "VIDEOGEN_EVENTS_KEEPALIVE_S": "0.5",
            }
        )
        with private_stack(tmp_path_factory, "outage", env) as stack:
            yield stack, proxy


@dataclass
class Timed:
    name: str
    response: httpx.Response
    seconds: float


def timed(name: str, call: Callable[[], httpx.Response]) -> Timed:
    started = time.monotonic()
    response = call()
    return Timed(name, response, time.monotonic() - started)


def assert_unavailable(t: Timed, code: str | None) -> None:
    """A 503 with Retry-After and the OpenAI-style body, within BOUND_S; `code` if given."""
    r = t.response
    assert r.status_code == 503, f"{t.name}: {r.status_code} {r.text}"
    assert int(r.headers["Retry-After"]) >= 1, t.name
    error = r.json()["error"]
    assert error["type"] == "service_unavailable_error", t.name
    assert code is None or error["code"] == code, f"{t.name}: {error}"
    assert t.seconds < BOUND_S, f"{t.name} took {t.seconds:.2f}s"


@dataclass
class EventStream:
    """An SSE stream read in a thread: its raw lines, and when it ended."""

    api: httpx.Client
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    status: int | None = None
    ended_at: float | None = None
    error: BaseException | None = None

    def start(self) -> EventStream:
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        try:
            timeout = httpx.Timeout(10, read=60)
            with self.api.stream("GET", self.path, headers=self.headers, timeout=timeout) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    self.lines.append(line)
        except httpx.HTTPError as err:
            self.error = err
        finally:
            self.ended_at = time.monotonic()

    def ids(self) -> list[str]:
        return [ln.removeprefix("id: ") for ln in self.lines if ln.startswith("id: ")]

    def wait(self, until: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not until() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert until(), f"stream {self.path}: {self.lines[-5:]} error={self.error!r}"


def reads(api: httpx.Client, video_id: str) -> dict[str, Callable[[], httpx.Response]]:
    return {
        "retrieve": lambda: api.get(f"/v1/videos/{video_id}"),
        "list": lambda: api.get("/v1/videos"),
        "content": lambda: api.get(f"/v1/videos/{video_id}/content"),
        "content_url": lambda: api.get(f"/v1/videos/{video_id}/content_url"),
    }


def test_object_store_cut_answers_503_then_recovers(outage: tuple[Stack, FaultProxy]) -> None:
    stack, proxy = outage
    with api_client(stack) as api:
        done = wait_for(api, submit(api, seed=3)["id"])
        assert done["status"] == "completed"
        proxy.cut()
        try:
            answers = [timed(name, call) for name, call in reads(api, done["id"]).items()]
            for t in answers:
                assert_unavailable(t, "storage_unavailable")
            print("store cut latencies:", {t.name: f"{t.seconds:.2f}s" for t in answers})
            ready = timed("readyz", lambda: api.get("/readyz"))
            assert ready.response.status_code == 503 and ready.seconds < BOUND_S
            assert ready.response.headers["Retry-After"].isdigit()
            checks = ready.response.json()["checks"]
            assert checks["temporal"] == "ok" and checks["storage"].startswith("error"), checks
            assert api.get("/livez").status_code == 200
        finally:
            proxy.restore()
        for name, call in reads(api, done["id"]).items():
            assert call().status_code == 200, name
        assert api.get("/readyz").json()["checks"] == {"temporal": "ok", "storage": "ok"}


def test_temporal_outage_answers_503_fast_and_the_api_recovers_by_itself(
    outage: tuple[Stack, FaultProxy],
) -> None:
    stack, _ = outage
    assert stack.server is not None
    api_pid = stack.child("api").process.pid  # type: ignore[union-attr]
    with api_client(stack) as api:
        job = submit(api, **LONG_JOB, seed=11)["id"]
        stream = EventStream(api, f"/v1/videos/{job}/events").start()
        stream.wait(lambda: any(ln.startswith("id: ") for ln in stream.lines), 60)

        hung(stack, api, job)
        stopped = time.monotonic()
        stack.server.stop()
        try:
            # A second API started while Temporal is down starts all the same, answers 503, and
            # connects by itself once Temporal is back.
            with start_api(stack) as late:
                assert_unavailable(timed("late list", lambda: late.api.get("/v1/videos")), None)
                measured = outage_requests(api, job, stopped + OUTAGE_S)
                # The stream that was open when Temporal went away ended with a retry hint.
                stream.wait(lambda: stream.ended_at is not None, 5)
                assert any(ln.startswith("retry: ") for ln in stream.lines), stream.lines[-5:]
                assert stream.ended_at is not None and stream.ended_at - stopped < 2 * BOUND_S
                stack.server.start()  # the same database and port
                print("outage latencies:", {n: f"{max(s):.2f}s" for n, s in measured.items()})
                recovered = wait_ok(api, f"/v1/videos/{job}", 30)
                print(f"API answered 200 {recovered:.1f}s after Temporal was back")
                print(f"late API: 200 after {wait_ok(late.api, '/v1/videos', 30):.1f}s")
        finally:
            if stack.server.process is None:
                stack.server.start()
        stack.wait_gpu_workers(1)  # restarts a worker that gave up meanwhile, if any
        # Resuming with Last-Event-ID gives only newer events, through to the end.
        seen = int(stream.ids()[-1])
        resumed = EventStream(api, f"/v1/videos/{job}/events", {"Last-Event-ID": str(seen)})
        resumed.start().wait(lambda: resumed.ended_at is not None, 180)
        ids = resumed.ids()
        assert ids and ids[-1] == "end", resumed.lines[-5:]
        assert all(int(i) > seen for i in ids[:-1]), (seen, ids)
        assert wait_for(api, job, timeout_s=60)["status"] == "completed"
    assert stack.child("api").process.pid == api_pid  # type: ignore[union-attr]


@dataclass
class ApiProcess:
    """One more `videogen api` process for the stack, on its own port, and a client for it."""

    process: subprocess.Popen[bytes]
    api: httpx.Client

    def __enter__(self) -> ApiProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.api.close()
        self.process.terminate()
        self.process.wait(15)


def start_api(stack: Stack, timeout_s: float = 60) -> ApiProcess:
    """Start it and wait until it serves HTTP (liveness: whatever Temporal does)."""
    port = free_port()
    log = open(stack.data_dir / f"api-{port}.log", "ab")  # noqa: SIM115 - the child's log
    process = subprocess.Popen(
        [sys.executable, "-m", "videogen.cli", "api", "--port", str(port)],
        env=stack.child_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    started = ApiProcess(process, api_client(stack))
    started.api.base_url = httpx.URL(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if started.api.get("/livez").status_code == 200:
                return started
        except httpx.ConnectError:
            assert process.poll() is None, f"the API exited with code {process.returncode}"
            assert time.monotonic() < deadline, f"no API on port {port} after {timeout_s}s"
            time.sleep(0.2)


def hung(stack: Stack, api: httpx.Client, job: str) -> None:
    """A Temporal that accepts connections but does not answer (SIGSTOP): calls are cut off by
    the API's per-call timeout, so reads are 503s within BOUND_S as well."""
    process = stack.server.process  # type: ignore[union-attr]
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        for name in ("retrieve", "list"):
            assert_unavailable(timed(name, reads(api, job)[name]), "temporal_unavailable")
    finally:
        process.send_signal(signal.SIGCONT)


def outage_requests(api: httpx.Client, job: str, until: float) -> dict[str, list[float]]:
    """Every endpoint, over and over until `until`: each a 503 within BOUND_S."""
    calls = {
        **reads(api, job),
        "create": lambda: api.post("/v1/videos", json={"prompt": "a storm", "size": "64x64"}),
        "cancel": lambda: api.post(f"/v1/videos/{job}/cancel"),
        "delete": lambda: api.delete(f"/v1/videos/{job}"),
        "events": lambda: api.get(f"/v1/videos/{job}/events"),
    }
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    while time.monotonic() < until:
        for name, call in calls.items():
            t = timed(name, call)
            # Admission (api/admission.py) names its own code for a failed limit check.
            assert_unavailable(t, None if name == "create" else "temporal_unavailable")
            seconds[name].append(t.seconds)
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["storage"] == "ok"
        assert ready.headers["Retry-After"].isdigit()
        assert ready.json()["checks"]["temporal"].startswith("error")
        assert api.get("/livez").status_code == 200
    return seconds


def wait_ok(api: httpx.Client, path: str, timeout_s: float) -> float:
    """Seconds until `path` answers 200; meanwhile only 503s. Each answer within BOUND_S."""
    started = time.monotonic()
    while (t := timed(path, lambda: api.get(path))).response.status_code != 200:
        assert_unavailable(t, None)
        assert time.monotonic() - started < timeout_s, f"{path}: still {t.response.text}"
        time.sleep(0.2)
    assert t.seconds < BOUND_S, f"{path} answered 200 after {t.seconds:.2f}s"
    return time.monotonic() - started


def test_sigterm_ends_open_streams_with_a_retry_hint_and_exits_fast(
    outage: tuple[Stack, FaultProxy],
) -> None:
    stack, _ = outage
    api_process = stack.child("api").process
    assert api_process is not None
    with api_client(stack, QUEUED_KEY) as api:
        queued = submit(api, seed=int(uuid.uuid4().int % 1000))["id"]
        stream = EventStream(api, f"/v1/videos/{queued}/events").start()
        stream.wait(lambda: any(ln.startswith("id: ") for ln in stream.lines), 30)
        assert api.get(f"/v1/videos/{queued}").json()["status"] == "queued"

        signalled = time.monotonic()
        api_process.send_signal(signal.SIGTERM)
        try:
            api_process.wait(15)
        except Exception:
            api_process.kill()
            raise
        exited = time.monotonic() - signalled
        stream.wait(lambda: stream.ended_at is not None, 5)
        assert any(ln.startswith("retry: ") for ln in stream.lines), stream.lines[-5:]
        assert any("shutting down" in ln for ln in stream.lines), stream.lines[-5:]
        print(f"API exited {exited:.2f}s after SIGTERM")
        assert exited < 6, f"the API took {exited:.1f}s to exit after SIGTERM"
        with pytest.raises(httpx.ConnectError):  # it no longer accepts
            api.get("/livez")
