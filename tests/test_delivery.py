"""Webhooks, signed download URLs and retention on the real stack.

The webhook receiver is a real HTTP server on loopback (allowed explicitly for the tests by
VIDEOGEN_WEBHOOK_ALLOWED_HOSTS); signatures are verified with the Standard Webhooks algorithm
written out here, independently of the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from helpers import direct_request, submit, wait_for
from temporalio.client import Client

from api import jobs
from api.routers.files import signed_path
from videogen.settings import ApiKey
from videogen.stack import Stack
from videogen.temporal import connect


class Receiver:
    """Answers the first `failures` deliveries with 500, then 200; records every request."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        me = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = 500 if len(me.received) < me.failures else 200
                me.received.append(({k.lower(): v for k, v in self.headers.items()}, body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/videogen"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=1)
    yield r
    r.server.shutdown()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks check: HMAC-SHA256 over "{id}.{timestamp}.{body}" with the
    base64-decoded secret, compared with each `v1,<base64>` in the signature header."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(sig.split(",", 1)[1], expected)
        for sig in headers["webhook-signature"].split()
    )


def test_completed_webhook_is_signed_and_retried_after_a_500(
    api: httpx.Client, receiver: Receiver
) -> None:
    secret = api.get("/v1/webhook_secret").json()["secret"]
    assert secret.startswith("whsec_")
    v = submit(api, webhook_url=receiver.url, seed=31)
    assert wait_for(api, v["id"])["status"] == "completed"
    deadline = time.monotonic() + 30
    while len(receiver.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # a delivery that landed is never sent again (retries would come by now)
    assert len(receiver.received) == 2, [r[2] for r in receiver.received]
    (h1, b1, code1), (h2, b2, code2) = receiver.received
    assert (code1, code2) == (500, 200)
    # The same message id on the retry (receivers deduplicate on it), each attempt signed.
    assert h1["webhook-id"] == h2["webhook-id"] == f"msg_{v['id']}_completed"
    for headers, body in ((h1, b1), (h2, b2)):
        assert verify(secret, headers, body)
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    event = json.loads(b2)
    assert event["type"] == "video.completed" and event["data"]["id"] == v["id"]
    assert event["data"]["status"] == "completed"
    # A tampered body does not verify: the check above can fail.
    assert not verify(secret, h2, b2.replace(b"completed", b"cancelled"))
    # Another user's secret differs.
    assert (
        secret
        != api.get("/v1/webhook_secret", headers={"Authorization": "Bearer other-key"}).json()[
            "secret"
        ]
    )


def test_cancelled_job_fires_its_webhook(api: httpx.Client, receiver: Receiver) -> None:
    receiver.failures = 0
    v = submit(api, webhook_url=receiver.url, size="256x256", seconds=4, num_inference_steps=500)
    wait_for(api, v["id"], ("in_progress",))
    assert api.post(f"/v1/videos/{v['id']}/cancel").status_code == 200
    assert wait_for(api, v["id"])["status"] == "cancelled"
    deadline = time.monotonic() + 30
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert json.loads(receiver.received[0][1])["type"] == "video.cancelled"


def test_progress_webhooks_when_asked_for(api: httpx.Client, receiver: Receiver) -> None:
    receiver.failures = 0
    secret = api.get("/v1/webhook_secret").json()["secret"]
    v = submit(
        api,
        webhook_url=receiver.url,
        num_inference_steps=40,
        seed=33,
        webhook_events=["video.progress", "video.completed"],
    )
    assert wait_for(api, v["id"])["status"] == "completed"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
        json.loads(b)["type"] == "video.completed" for _, b, _ in receiver.received
    ):
        time.sleep(0.1)
    time.sleep(1)  # progress deliveries are independent: let the last ones land
    events = [(h, json.loads(b)) for h, b, _ in receiver.received]
    assert all(verify(secret, h, b) for h, b, _ in receiver.received)
    progress = sorted(
        (int(h["webhook-id"].rsplit("-", 1)[1]), e["data"]["progress"])
        for h, e in events
        if e["type"] == "video.progress"
    )
    assert len(progress) >= 3, events
    assert [p for _, p in progress] == sorted(p for _, p in progress)  # never backwards
    assert [e["type"] for _, e in events].count("video.completed") == 1
    assert len({h["webhook-id"] for h, _ in events}) == len(events)
    bad = api.post(
        "/v1/videos",
        json={"prompt": "x", "webhook_url": receiver.url, "webhook_events": ["video.started"]},
    )
    assert bad.status_code == 400 and "video.progress" in bad.json()["error"]["message"]


def test_a_private_webhook_url_is_refused_at_submission(api: httpx.Client) -> None:
    r = api.post("/v1/videos", json={"prompt": "x", "webhook_url": "http://192.168.1.10/h"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "webhook_url"
    assert "private address" in r.json()["error"]["message"]


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_signed_urls_expire_and_resist_tampering(api: httpx.Client, stack: Stack) -> None:
    v = submit(api, seed=32)
    assert wait_for(api, v["id"])["status"] == "completed"
    link = api.get(f"/v1/videos/{v['id']}/content_url").json()
    assert link["expires_at"] > time.time()
    with httpx.Client(timeout=30) as anonymous:  # no API key: the signature is the key
        ok = anonymous.get(link["url"])
        assert ok.status_code == 200
        assert ok.content == api.get(f"/v1/videos/{v['id']}/content").content
        tampered = anonymous.get(_with_query(link["url"], sig="0" * 64))
        assert tampered.status_code == 403
        assert tampered.json()["error"]["code"] == "invalid_signature"
        longer = anonymous.get(_with_query(link["url"], expires=str(link["expires_at"] + 3600)))
        assert longer.status_code == 403
        other = anonymous.get(link["url"].replace("/video?", "/thumbnail?"))
        assert other.status_code == 403
        odd = anonymous.get(_with_query(link["url"], sig="é" * 64))
        assert odd.status_code == 403
        # A correctly signed link whose time is up (signed here with the stack's default key).
        past = int(time.time()) - 1
        expired = anonymous.get(
            stack.api_url + signed_path("videogen-dev-url-key", v["id"], "video", past)
        )
        assert expired.status_code == 403 and expired.json()["error"]["code"] == "url_expired"


@pytest.fixture
async def client(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Client:
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{stack.temporal_port}")
    return await connect(wait_s=10)


async def test_assets_are_deleted_when_they_expire(
    api: httpx.Client, stack: Stack, client: Client
) -> None:
    req = direct_request(stack, retention_s=2.0)
    await jobs.start(client, req, ApiKey("k", "dev", "paid"))
    v: dict[str, Any] = wait_for(api, req.job_id)
    assert v["status"] == "completed"
    assert v["expires_at"] == pytest.approx(v["completed_at"] + 2, abs=1)
    assert api.get(f"/v1/videos/{req.job_id}/content").status_code == 200
    objects = stack.data_dir / "objects" / "videos" / req.job_id
    deadline = time.monotonic() + 30
    while objects.exists() and any(objects.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not objects.exists() or not any(objects.iterdir())
    gone = api.get(f"/v1/videos/{req.job_id}/content")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "content_gone"
    link = api.get(f"/v1/videos/{req.job_id}/content_url")
    assert link.status_code == 404 and link.json()["error"]["code"] == "content_gone"
