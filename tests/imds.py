"""A stand-in EC2 instance-metadata server on loopback that can announce a spot interruption."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
        self.url = (
            f"http://127.0.0.1:{self.server.server_address[1]}"
            "/latest/meta-data/spot/instance-action"
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
