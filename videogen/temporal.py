"""Connecting to Temporal the way the SDK's environment configuration says.

`TEMPORAL_ADDRESS` (default 127.0.0.1:7233), `TEMPORAL_NAMESPACE` (default `default`),
`TEMPORAL_API_KEY`, `TEMPORAL_TLS_*` and profiles in the standard TOML config file all apply, so
nothing here changes between the embedded dev server and a production cluster.

Workers keep the SDK's long retries (an outage of Temporal is waited out). The API's client
(`connect_api`) fails fast instead: bounded retries and a default per-call timeout, so a request
answers 503 within about 2 s (api/errors.py) rather than blocking while Temporal is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from temporalio.client import (
    CancelWorkflowInput,
    Client,
    CountWorkflowsInput,
    DescribeWorkflowInput,
    FetchWorkflowHistoryEventsInput,
    Interceptor,
    ListWorkflowsInput,
    OutboundInterceptor,
    QueryWorkflowInput,
    SignalWorkflowInput,
    StartWorkflowInput,
    TerminateWorkflowInput,
    WorkflowExecutionAsyncIterator,
    WorkflowExecutionCount,
    WorkflowExecutionDescription,
    WorkflowHandle,
    WorkflowHistoryEventAsyncIterator,
)
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfig
from temporalio.service import RetryConfig
from temporalio.worker import Worker

from videogen import codec, sdk_metrics, tracing
from videogen.settings import Settings

DEFAULT_ADDRESS = "127.0.0.1:7233"

# The API's budget per Temporal call. A dead server answers UNAVAILABLE at once and is retried
# for at most API_RETRY's 1 s (measured: 1.2-1.4 s in all, against 9 s with the SDK's default
# 10 s budget); a server that accepts but does not answer is cut off by API_RPC_TIMEOUT.
API_RETRY = RetryConfig(
    initial_interval_millis=100,
    max_interval_millis=400,
    max_elapsed_time_millis=1000,
    max_retries=8,
)
API_RPC_TIMEOUT = timedelta(seconds=1.5)


def connect_config() -> dict[str, object]:
    config = dict(ClientConfig.load_client_connect_config())
    if not config.get("target_host"):
        config["target_host"] = DEFAULT_ADDRESS
    return config


def is_embedded() -> bool:
    """Whether this process talks to a Temporal server on loopback: the embedded dev server
    (`videogen up`, tests), where the development secrets may be used."""
    host = str(connect_config()["target_host"]).rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def refuse_development_secrets(problems: list[str]) -> None:
    """RuntimeError, saying what to set, if `problems` (Settings.development_secrets) is not
    empty and the stack is not the embedded one: those values are public."""
    if problems and not is_embedded():
        raise RuntimeError(
            "refusing to start against a Temporal server that is not the embedded one with "
            "public development secrets: " + "; ".join(problems)
        )


def data_converter(keys: codec.PayloadKeys | None = None) -> DataConverter:
    """The payload converter every client, worker and replayer of videogen uses: payloads
    encrypted with `keys` (default: VIDEOGEN_PAYLOAD_KEYS; videogen.codec)."""
    if keys is None:
        keys = Settings().payload_keyring
    return codec.data_converter(keys)


async def connect(*, wait_s: float = 0.0, keys: codec.PayloadKeys | None = None) -> Client:
    """Connect, retrying for up to `wait_s` seconds (a starting server refuses at first).

    The client (and the workers built on it) encrypt payloads (videogen.codec), report the
    SDK's metrics through this process's `/metrics` (videogen.sdk_metrics) and trace when
    tracing is on (videogen.tracing).
    """
    config = connect_config()
    config["data_converter"] = data_converter(keys)
    config["runtime"] = sdk_metrics.runtime()
    config["interceptors"] = tracing.interceptors()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await Client.connect(**config)  # type: ignore[arg-type]
        except RuntimeError as err:
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"cannot reach Temporal at {config['target_host']}: {err}. Is the server "
                    "running? (`videogen up` starts one; set TEMPORAL_ADDRESS for another)"
                ) from err
            await asyncio.sleep(0.25)


async def connect_api(keys: codec.PayloadKeys | None = None) -> Client:
    """The API's client: lazy, bounded retries, a default timeout on every call.

    Lazy, so the API starts (and its readiness says why it is not ready) while Temporal is down;
    the client connects on its first call and reconnects by itself after an outage (measured on
    a dev server stopped and started again on the same port).
    """
    config = connect_config()
    config["data_converter"] = data_converter(keys)
    config["runtime"] = sdk_metrics.runtime()
    config["interceptors"] = [*tracing.interceptors(), DefaultRpcTimeout(API_RPC_TIMEOUT)]
    config["retry_config"] = API_RETRY
    config["lazy"] = True
    return await Client.connect(**config)  # type: ignore[arg-type]


class _TimedInput(Protocol):
    rpc_timeout: timedelta | None


_In = TypeVar("_In", bound=_TimedInput)


class DefaultRpcTimeout(Interceptor):
    """Give every workflow call that sets no `rpc_timeout` this one (a call that sets its own,
    such as the status query, keeps it). Long polls (waiting for a running workflow's result)
    are left alone: the API never waits on them."""

    def __init__(self, timeout: timedelta) -> None:
        self.timeout = timeout

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _DefaultRpcTimeoutOutbound(next, self.timeout)


class _DefaultRpcTimeoutOutbound(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, timeout: timedelta) -> None:
        super().__init__(next)
        self._timeout = timeout

    def _bound(self, input: _In) -> _In:
        if input.rpc_timeout is None:
            input.rpc_timeout = self._timeout
        return input

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        return await self.next.start_workflow(self._bound(input))

    async def cancel_workflow(self, input: CancelWorkflowInput) -> None:
        await self.next.cancel_workflow(self._bound(input))

    async def describe_workflow(self, input: DescribeWorkflowInput) -> WorkflowExecutionDescription:
        return await self.next.describe_workflow(self._bound(input))

    def fetch_workflow_history_events(
        self, input: FetchWorkflowHistoryEventsInput
    ) -> WorkflowHistoryEventAsyncIterator:
        if not input.wait_new_event:
            self._bound(input)
        return self.next.fetch_workflow_history_events(input)

    def list_workflows(self, input: ListWorkflowsInput) -> WorkflowExecutionAsyncIterator:
        return self.next.list_workflows(self._bound(input))

    async def count_workflows(self, input: CountWorkflowsInput) -> WorkflowExecutionCount:
        return await self.next.count_workflows(self._bound(input))

    async def query_workflow(self, input: QueryWorkflowInput) -> Any:
        return await self.next.query_workflow(self._bound(input))

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        await self.next.signal_workflow(self._bound(input))

    async def terminate_workflow(self, input: TerminateWorkflowInput) -> None:
        await self.next.terminate_workflow(self._bound(input))


async def run_until_stopped(worker: Worker, stop: asyncio.Event | None = None) -> None:
    """Run `worker` until `stop` is set or the process gets SIGTERM/SIGINT, then drain it."""
    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        async with worker:
            await stop.wait()


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT set `stop` (in the main thread; elsewhere, as in
    tests, the caller owns `stop`)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
