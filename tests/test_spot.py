"""Spot interruption notices, polled over real HTTP from a stand-in metadata server (the AWS
`spot/instance-action` format, IMDSv2 token or none)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from worker_gpu import spot

NOTICE = {"action": "terminate", "time": "2026-11-27T14:30:00Z"}


class Metadata:
    """404 on the notice path until `notice` is set; IMDSv2 tokens when `v2` is on."""

    def __init__(self, v2: bool) -> None:
        self.v2 = v2
        self.notice: dict[str, str] | None = None
        self.gets = 0
        meta = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                if self.path == "/latest/api/token" and meta.v2:
                    self._send(200, "tok-123")
                else:
                    self._send(405)

            def do_GET(self) -> None:
                meta.gets += 1
                if meta.v2 and self.headers.get("X-aws-ec2-metadata-token") != "tok-123":
                    self._send(401)
                elif self.path != "/latest/meta-data/spot/instance-action" or not meta.notice:
                    self._send(404)
                else:
                    self._send(200, json.dumps(meta.notice))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = (f"http://127.0.0.1:{self.server.server_address[1]}"
                    "/latest/meta-data/spot/instance-action")
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(params=[True, False], ids=["imdsv2", "imdsv1"])
def metadata(request: pytest.FixtureRequest) -> Iterator[Metadata]:
    m = Metadata(v2=request.param)
    yield m
    m.server.shutdown()


async def test_waits_for_the_notice_and_returns_it(metadata: Metadata) -> None:
    task = asyncio.ensure_future(spot.wait_for_notice(metadata.url, poll_s=0.05))
    while metadata.gets < 3:  # several polls answered "no notice"
        await asyncio.sleep(0.02)
    assert not task.done()
    metadata.notice = NOTICE
    assert await asyncio.wait_for(task, timeout=5) == NOTICE


async def test_unreachable_endpoint_is_not_a_notice() -> None:
    task = asyncio.ensure_future(
        spot.wait_for_notice("http://127.0.0.1:9/latest/meta-data/spot/instance-action",
                             poll_s=0.05, timeout_s=0.2))
    await asyncio.sleep(0.5)
    assert not task.done()
    task.cancel()
