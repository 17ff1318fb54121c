"""Connecting to Temporal the way the SDK's environment configuration says.

`TEMPORAL_ADDRESS` (default 127.0.0.1:7233), `TEMPORAL_NAMESPACE` (default `default`),
`TEMPORAL_API_KEY`, `TEMPORAL_TLS_*` and profiles in the standard TOML config file all apply, so
nothing here changes between the embedded dev server and a production cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

from temporalio.client import Client
from temporalio.envconfig import ClientConfig
from temporalio.worker import Worker

from videogen import sdk_metrics, tracing

DEFAULT_ADDRESS = "127.0.0.1:7233"


def connect_config() -> dict[str, object]:
    config = dict(ClientConfig.load_client_connect_config())
    if not config.get("target_host"):
        config["target_host"] = DEFAULT_ADDRESS
    return config


async def connect(*, wait_s: float = 0.0) -> Client:
    """Connect, retrying for up to `wait_s` seconds (a starting server refuses at first).

    The client (and the workers built on it) report the SDK's metrics through this process's
    `/metrics` (videogen.sdk_metrics) and trace when tracing is on (videogen.tracing).
    """
    config = connect_config()
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


async def run_until_stopped(worker: Worker, stop: asyncio.Event | None = None) -> None:
    """Run `worker` until `stop` is set or the process gets SIGTERM/SIGINT, then drain it."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Outside the main thread (tests) there are no signal handlers: the caller owns `stop`.
        with contextlib.suppress(RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        async with worker:
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
