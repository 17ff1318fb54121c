"""A real S3-protocol server (moto) on 127.0.0.1 for tests.

Tests talk to it over HTTP exactly as the services talk to S3, instead of patching botocore
in-process (`mock_aws`). It runs in a child process so that:

* it keeps answering while the test process is busy (GIL-heavy work, a blocked event loop);
* its state is not the in-process moto backend, which any `mock_aws()` elsewhere in the session
  would reset or intercept;
* subprocesses started by tests (workers) can reach it like any other endpoint.

The child picks a free port itself (port 0) and reports it on stdout, so there is no
find-a-port-then-bind race. It exits when its stdin closes, i.e. also when the test process dies.

Typical use, e.g. in a conftest:

    @pytest.fixture(scope="session")
    def s3_server():
        with s3server.s3_server() as server:
            yield server

    def test_x(s3_server, monkeypatch):
        bucket = s3_server.create_bucket()
        for name, value in s3_server.env.items():
            monkeypatch.setenv(name, value)
        for name in s3server.CLEAR_ENV:
            monkeypatch.delenv(name, raising=False)
        store = open_store(f"s3://{bucket}/prefix")
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import boto3
from botocore.config import Config

REGION = "us-east-1"

# Dummy credentials: moto accepts any; boto3 just needs something to sign with.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}

# Variables that would make boto3 ignore or override the settings in `s3_env` (a profile with
# other credentials, a session token for real AWS, a service-specific endpoint). Remove them
# when applying `s3_env` to a test's environment.
CLEAR_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)

# Runs in the child: bind port 0, print the port, serve until stdin closes.
_CHILD = """
import logging, sys
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


def s3_env(endpoint_url: str) -> dict[str, str]:
    """Environment for a boto3 user (test or subprocess) to reach the server at `endpoint_url`."""
    return {
        **CREDENTIALS,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint_url,
        # Never probe the EC2 metadata service for credentials or region (slow timeouts).
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def make_client(endpoint_url: str) -> Any:
    """A boto3 S3 client for the server, configured explicitly (ignores the environment)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )


def unique_bucket_name(prefix: str = "test") -> str:
    """A fresh, valid bucket name (lowercase, <= 63 chars)."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def create_bucket(endpoint_url: str, name: str | None = None, client: Any | None = None) -> str:
    """Create bucket `name` (or a fresh unique one) on the server and return its name."""
    bucket = name or unique_bucket_name()
    (client or make_client(endpoint_url)).create_bucket(Bucket=bucket)
    return bucket


@dataclass
class S3Server:
    """A running server; `stop()` (or the `s3_server()` context manager) ends it."""

    endpoint_url: str
    process: subprocess.Popen[bytes]
    _stderr: IO[bytes] = field(repr=False)
    _client: Any | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """Variables to set (e.g. with monkeypatch.setenv) so boto3 talks to this server."""
        return s3_env(self.endpoint_url)

    def subprocess_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """A full environment for a child process: `base` (default os.environ) + `env`."""
        env = dict(os.environ if base is None else base)
        for name in CLEAR_ENV:
            env.pop(name, None)
        env.update(self.env)
        return env

    def client(self) -> Any:
        """A shared boto3 S3 client for this server (boto3 clients are thread-safe)."""
        if self._client is None:
            self._client = make_client(self.endpoint_url)
        return self._client

    def create_bucket(self, name: str | None = None) -> str:
        return create_bucket(self.endpoint_url, name, client=self.client())

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()  # the child's cue to shut down cleanly
                self.process.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


def start_s3_server(timeout: float = 30.0) -> S3Server:
    """Start moto's S3 server on 127.0.0.1 on a free port and wait until it accepts requests."""
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        # Credentials for anything moto itself might sign; nothing else from our env matters.
        env={**os.environ, **CREDENTIALS, "AWS_DEFAULT_REGION": REGION},
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        process.kill()
        process.wait()
        stderr.seek(0)
        detail = stderr.read().decode(errors="replace")[-4000:]
        stderr.close()
        raise RuntimeError(f"moto S3 server did not start within {timeout}s:\n{detail}")
    # ThreadedMotoServer.start() returns once the socket is bound and listening, so the server
    # accepts connections as soon as it has reported the port.
    return S3Server(f"http://127.0.0.1:{int(line)}", process, stderr)


@contextmanager
def s3_server(timeout: float = 30.0) -> Iterator[S3Server]:
    """`start_s3_server` as a context manager that always stops the server."""
    server = start_s3_server(timeout)
    try:
        yield server
    finally:
        server.stop()
